/*
 * test_fernet: the fernet unit against the official vectors (read as-is
 * from the directory given as argv[1]), hand-built tokens that are signed
 * correctly but wrong in exactly one other way, strict base64url, keys,
 * and round trips. Links mt_core only; uses OpenSSL's HMAC directly (mt_core
 * links libcrypto) so that forged tokens are re-signed independently of the
 * code under test.
 */
// SPDX-License-Identifier: MIT
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "buf.h"
#include "check.h"
#include "err.h"
#include "fernet.h"

static const char *vectors_dir;

// The key and issue time every official vector uses.
#define VKEY "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="
static const int64_t T0 = 499162800;  // 1985-10-26T01:20:00-07:00
static const uint8_t IV[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// ---------------------------------------------------------------- helpers

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
// days_from_civil), so the test needs no timegm().
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

// Unix seconds of "YYYY-MM-DDTHH:MM:SS" followed by "Z" or "+HH:MM"/"-HH:MM"
// (fractions of a second are not used by the vectors and not accepted).
static int64_t parse_rfc3339(const char *s)
{
    int y, mo, d, h, mi, sec, n = 0;
    CHECK(sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) == 6);
    int64_t t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
    const char *z = s + n;
    if (strcmp(z, "Z") == 0 || strcmp(z, "z") == 0) {
        return t;
    }
    int oh, om, m = 0;
    CHECK((z[0] == '+' || z[0] == '-') && sscanf(z + 1, "%2d:%2d%n", &oh, &om, &m) == 2);
    CHECK(z[1 + m] == '\0');
    int64_t off = (int64_t)oh * 3600 + om * 60;
    return z[0] == '+' ? t - off : t + off;  // local = UTC + offset
}

static json_t *load_vectors(const char *name)
{
    char path[4096];  // test-only path, not user data
    CHECK(snprintf(path, sizeof path, "%s/%s", vectors_dir, name) < (int)sizeof path);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (root == NULL) {
        fprintf(stderr, "%s: %s (line %d)\n", path, jerr.text, jerr.line);
    }
    CHECK(root != NULL && json_is_array(root) && json_array_size(root) > 0);
    return root;
}

static const char *field(const json_t *c, const char *name)
{
    const char *s = json_string_value(json_object_get(c, name));
    CHECK(s != NULL);
    return s;
}

static void parse_key(mt_fernet_key *key, const char *text)
{
    mt_err err = {0};
    CHECK_OK(mt_fernet_key_parse(key, text, strlen(text), &err), &err);
    mt_err_clear(&err);
}

// Decrypts and checks the plaintext.
static void expect_plain(const mt_fernet_key *key, const char *tok, size_t tok_len, int64_t ttl,
                         int64_t now, const void *want, size_t want_len)
{
    mt_buf plain;
    mt_buf_init(&plain, true);
    mt_err err = {0};
    const char *why = "unset";
    CHECK_OK(mt_fernet_decrypt(key, tok, tok_len, ttl, now, &plain, &why, &err), &err);
    CHECK(why == NULL);
    CHECK_EQ(plain.len, want_len);
    if (want_len > 0) {
        CHECK_MEM_EQ(plain.data, want, want_len);
    }
    mt_buf_clear(&plain);
    mt_err_clear(&err);
}

// Decrypts, expects rejection by want_why, the fixed message for it, and no
// plaintext at all.
static void expect_reject(const mt_fernet_key *key, const char *tok, size_t tok_len, int64_t ttl,
                          int64_t now, const char *want_why)
{
    bool expired = strcmp(want_why, "expired") == 0;
    mt_buf plain;
    mt_buf_init(&plain, true);
    mt_err err = {0};
    const char *why = NULL;
    int rc = mt_fernet_decrypt(key, tok, tok_len, ttl, now, &plain, &why, &err);
    CHECK_EQ(rc, expired ? MT_EEXPIRED : MT_ECRYPTO);
    CHECK_STR_EQ(why, want_why);
    CHECK_STR_EQ(mt_err_msg(&err), expired ? "token expired" : "invalid token");
    CHECK_EQ(plain.len, 0);
    mt_buf_clear(&plain);
    mt_err_clear(&err);
}

// The decoded bytes of a fresh, valid token.
static void make_raw(const mt_fernet_key *key, const char *msg, int64_t ts, mt_buf *raw)
{
    mt_buf tok;
    mt_buf_init(&tok, false);
    mt_err err = {0};
    CHECK_OK(mt_fernet_encrypt(key, (const uint8_t *)msg, strlen(msg), ts, IV, &tok, &err), &err);
    CHECK_OK(mt_b64url_decode((const char *)tok.data, tok.len, raw), NULL);
    mt_buf_clear(&tok);
}

// Recomputes the trailing HMAC over everything before it (with OpenSSL, not
// the module) and encodes the result as a token.
static void sign_and_encode(const mt_fernet_key *key, mt_buf *raw, mt_buf *tok)
{
    CHECK(raw->len >= 32);
    unsigned int mac_len = 0;
    CHECK(HMAC(EVP_sha256(), key->signing, 16, raw->data, raw->len - 32, raw->data + raw->len - 32,
               &mac_len) != NULL);
    CHECK_EQ(mac_len, 32);
    mt_buf_reset(tok);
    CHECK_OK(mt_b64url_encode(raw->data, raw->len, tok), NULL);
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) {
        p[i] = (uint8_t)v;
    }
}

// Builds a token for "hello" stamped ts whose bytes were changed by edit
// (or not, when edit is NULL) and re-signed, and expects want_why.
static void forged(int64_t ts, void (*edit)(mt_buf *), int64_t ttl, int64_t now,
                   const char *want_why)
{
    mt_fernet_key key;
    parse_key(&key, VKEY);
    mt_buf raw, tok;
    mt_buf_init(&raw, false);
    mt_buf_init(&tok, false);
    make_raw(&key, "hello", ts, &raw);
    if (edit != NULL) {
        edit(&raw);
    }
    sign_and_encode(&key, &raw, &tok);
    expect_reject(&key, (const char *)tok.data, tok.len, ttl, now, want_why);
    mt_buf_clear(&raw);
    mt_buf_clear(&tok);
    mt_fernet_key_clear(&key);
}

// ---------------------------------------------------------------- vectors

static void test_fernet_rfc3339(void)
{
    CHECK_EQ(parse_rfc3339("1985-10-26T01:20:00-07:00"), 499162800);
    CHECK_EQ(parse_rfc3339("1985-10-26T01:20:01-07:00"), 499162801);
    CHECK_EQ(parse_rfc3339("1985-10-26T01:21:31-07:00"), 499162891);
    CHECK_EQ(parse_rfc3339("1970-01-01T00:00:00Z"), 0);
    CHECK_EQ(parse_rfc3339("2000-03-01T05:30:00+05:30"), 951868800);
}

static void test_fernet_generate_vectors(void)
{
    json_t *root = load_vectors("generate.json");
    size_t i;
    json_t *c;
    json_array_foreach(root, i, c)
    {
        mt_fernet_key key;
        parse_key(&key, field(c, "secret"));
        json_t *jiv = json_object_get(c, "iv");
        CHECK_EQ(json_array_size(jiv), 16);
        uint8_t iv[16];
        for (size_t k = 0; k < 16; k++) {
            iv[k] = (uint8_t)json_integer_value(json_array_get(jiv, k));
        }
        const char *src = field(c, "src");
        mt_buf tok;
        mt_buf_init(&tok, false);
        mt_err err = {0};
        CHECK_OK(mt_fernet_encrypt(&key, (const uint8_t *)src, strlen(src),
                                   parse_rfc3339(field(c, "now")), iv, &tok, &err),
                 &err);
        CHECK_STR_EQ((const char *)tok.data, field(c, "token"));
        mt_buf_clear(&tok);
        mt_fernet_key_clear(&key);
    }
    json_decref(root);
}

static void test_fernet_verify_vectors(void)
{
    json_t *root = load_vectors("verify.json");
    size_t i;
    json_t *c;
    json_array_foreach(root, i, c)
    {
        mt_fernet_key key;
        parse_key(&key, field(c, "secret"));
        const char *tok = field(c, "token"), *src = field(c, "src");
        int64_t ttl = json_integer_value(json_object_get(c, "ttl_sec"));
        CHECK(ttl > 0);
        expect_plain(&key, tok, strlen(tok), ttl, parse_rfc3339(field(c, "now")), src, strlen(src));
        mt_fernet_key_clear(&key);
    }
    json_decref(root);
}

// Which check must reject each official invalid vector (README of the
// vectors: each was decoded to see which check it really reaches).
static const struct {
    const char *desc, *why;
} invalid_checks[] = {
    {"incorrect mac", "mac"},
    {"too short", "length"},
    {"invalid base64", "base64"},
    {"payload size not multiple of block size", "length"},
    {"payload padding error", "padding"},
    {"far-future TS (unacceptable clock skew)", "future"},
    {"expired TTL", "expired"},
    {"incorrect IV (causes padding error)", "padding"},
};

static void test_fernet_invalid_vectors(void)
{
    json_t *root = load_vectors("invalid.json");
    size_t i, n = sizeof invalid_checks / sizeof invalid_checks[0];
    bool seen[sizeof invalid_checks / sizeof invalid_checks[0]] = {false};
    json_t *c;
    json_array_foreach(root, i, c)
    {
        const char *desc = field(c, "desc"), *want = NULL;
        for (size_t k = 0; k < n; k++) {
            if (strcmp(desc, invalid_checks[k].desc) == 0) {
                want = invalid_checks[k].why;
                seen[k] = true;
            }
        }
        if (want == NULL) {
            CHECK_FAIL_("invalid.json case %zu has an unmapped desc \"%s\"", i, desc);
        }
        mt_fernet_key key;
        parse_key(&key, field(c, "secret"));
        const char *tok = field(c, "token");
        int64_t ttl = json_integer_value(json_object_get(c, "ttl_sec"));
        expect_reject(&key, tok, strlen(tok), ttl, parse_rfc3339(field(c, "now")), want);
        mt_fernet_key_clear(&key);
    }
    for (size_t k = 0; k < n; k++) {
        CHECK(seen[k]);
    }
    json_decref(root);
}

// ---------------------------------------------------------------- forged tokens

static void edit_version(mt_buf *raw)
{
    raw->data[0] = 0x81;
}

// Drops one ciphertext byte of a two-block body: 88 bytes, over the minimum.
static void edit_ct_len(mt_buf *raw)
{
    CHECK_EQ(raw->len, 57 + 32);
    memmove(raw->data + 25 + 31, raw->data + 25 + 32, 32);
    raw->len -= 1;
}

// A one-block body has no ciphertext at all once its block is removed.
static void edit_no_ct(mt_buf *raw)
{
    memmove(raw->data + 25, raw->data + 25 + 16, 32);
    raw->len -= 16;
}

// CBC: flipping IV bit b flips the same bit of the first plaintext block,
// which for "hello" is also the last block: "hello" then 11 bytes of 0x0b.
static void edit_pad_zero(mt_buf *raw)
{
    raw->data[9 + 15] ^= 0x0b;  // last byte 0x0b -> 0x00
}

static void edit_pad_big(mt_buf *raw)
{
    raw->data[9 + 15] ^= 0x0b ^ 0x11;  // last byte -> 17, more than a block
}

static void edit_pad_mixed(mt_buf *raw)
{
    raw->data[9 + 10] ^= 0x01;  // one pad byte 0x0a among 0x0b
}

static void edit_far_future(mt_buf *raw)
{
    put_be64(raw->data + 1, (uint64_t)T0 + 3600);
}

static void edit_max_ts(mt_buf *raw)
{
    put_be64(raw->data + 1, UINT64_MAX);
}

static void edit_expired(mt_buf *raw)
{
    put_be64(raw->data + 1, (uint64_t)T0 - 61);
}

static void test_fernet_forged_version(void)
{
    forged(T0, edit_version, 60, T0, "version");
    forged(T0, edit_version, 0, T0, "version");
}

static void test_fernet_forged_length(void)
{
    mt_fernet_key key;
    parse_key(&key, VKEY);
    mt_buf raw, tok;
    mt_buf_init(&raw, false);
    mt_buf_init(&tok, false);
    make_raw(&key, "twenty bytes of text", T0, &raw);  // two blocks
    edit_ct_len(&raw);
    sign_and_encode(&key, &raw, &tok);
    expect_reject(&key, (const char *)tok.data, tok.len, 60, T0, "length");
    expect_reject(&key, (const char *)tok.data, tok.len, 0, T0, "length");
    expect_reject(&key, "", 0, 0, T0, "length");
    expect_reject(&key, "gA==", 4, 0, T0, "length");
    mt_buf_clear(&raw);
    mt_buf_clear(&tok);
    mt_fernet_key_clear(&key);
    forged(T0, edit_no_ct, 60, T0, "length");
}

static void test_fernet_forged_padding(void)
{
    forged(T0, edit_pad_zero, 60, T0, "padding");
    forged(T0, edit_pad_big, 60, T0, "padding");
    forged(T0, edit_pad_mixed, 60, T0, "padding");
    forged(T0, edit_pad_mixed, 0, T0, "padding");
}

// A padding failure is found after the plaintext was decrypted into the
// caller's buffer; it must be wiped there, not just left uncounted.
static void test_fernet_rejected_plaintext_wiped(void)
{
    mt_fernet_key key;
    parse_key(&key, VKEY);
    mt_buf raw, tok, plain;
    mt_buf_init(&raw, false);
    mt_buf_init(&tok, false);
    mt_buf_init(&plain, false);  // not secure: nothing else wipes it
    make_raw(&key, "hello", T0, &raw);
    edit_pad_mixed(&raw);  // "hello" itself still decrypts intact
    sign_and_encode(&key, &raw, &tok);
    CHECK_EQ(mt_fernet_decrypt(&key, (const char *)tok.data, tok.len, 0, T0, &plain, NULL, NULL),
             MT_ECRYPTO);
    CHECK(plain.data != NULL && plain.len == 0 && plain.data[0] == 0);
    // "ello": the restored NUL terminator covers the 'h'.
    for (size_t i = 0; i + 4 <= plain.cap; i++) {
        CHECK(memcmp(plain.data + i, "ello", 4) != 0);
    }
    mt_buf_clear(&raw);
    mt_buf_clear(&tok);
    mt_buf_clear(&plain);
    mt_fernet_key_clear(&key);
}

static void test_fernet_forged_time(void)
{
    forged(T0, edit_far_future, 60, T0, "future");
    forged(T0, edit_max_ts, 60, T0, "future");
    forged(T0, edit_expired, 60, T0, "expired");
    forged(0, NULL, 60, INT64_MAX, "expired");
    forged(T0, NULL, 60, T0 + 61, "expired");
    forged(T0, NULL, 60, T0 - 61, "future");
}

// Both boundaries accept, as in Python's cryptography: a token stamped 1000
// with TTL 60 is good from 940 to 1060 inclusive.
static void test_fernet_time_boundaries(void)
{
    mt_fernet_key key;
    parse_key(&key, VKEY);
    mt_buf tok;
    mt_buf_init(&tok, false);
    mt_err err = {0};
    CHECK_OK(mt_fernet_encrypt(&key, (const uint8_t *)"x", 1, 1000, NULL, &tok, &err), &err);
    const char *t = (const char *)tok.data;
    expect_plain(&key, t, tok.len, 60, 1060, "x", 1);
    expect_reject(&key, t, tok.len, 60, 1061, "expired");
    expect_plain(&key, t, tok.len, 60, 940, "x", 1);
    expect_reject(&key, t, tok.len, 60, 939, "future");
    mt_buf_clear(&tok);
    mt_fernet_key_clear(&key);
}

// ttl <= 0 turns every time check off: old and far-future tokens decrypt.
static void test_fernet_no_ttl(void)
{
    mt_fernet_key key;
    parse_key(&key, VKEY);
    mt_buf tok;
    mt_buf_init(&tok, false);
    mt_err err = {0};
    CHECK_OK(mt_fernet_encrypt(&key, (const uint8_t *)"old", 3, 1000, NULL, &tok, &err), &err);
    expect_plain(&key, (const char *)tok.data, tok.len, 0, 2000000000, "old", 3);
    expect_plain(&key, (const char *)tok.data, tok.len, -1, 2000000000, "old", 3);
    expect_plain(&key, (const char *)tok.data, tok.len, 0, 0, "old", 3);
    mt_buf_clear(&tok);
    mt_fernet_key_clear(&key);
}

// Which failure wins when a token has two: time before MAC (the spec's
// order), MAC before padding (no decryption of unauthenticated bytes).
static void test_fernet_check_order(void)
{
    mt_fernet_key key, other;
    parse_key(&key, VKEY);
    char other_text[45];
    CHECK_OK(mt_fernet_keygen(other_text, NULL), NULL);
    parse_key(&other, other_text);
    mt_buf raw, tok;
    mt_buf_init(&raw, false);
    mt_buf_init(&tok, false);
    make_raw(&key, "hello", T0, &raw);
    edit_pad_zero(&raw);
    sign_and_encode(&other, &raw, &tok);  // bad MAC for key and bad padding
    const char *t = (const char *)tok.data;
    expect_reject(&key, t, tok.len, 60, T0, "mac");
    expect_reject(&key, t, tok.len, 0, T0, "mac");
    expect_reject(&key, t, tok.len, 60, T0 + 3600, "expired");
    expect_reject(&key, t, tok.len, 60, T0 - 3600, "future");
    raw.data[0] = 0x81;
    sign_and_encode(&other, &raw, &tok);
    expect_reject(&key, (const char *)tok.data, tok.len, 60, T0 + 3600, "version");
    mt_buf_clear(&raw);
    mt_buf_clear(&tok);
    mt_fernet_key_clear(&key);
    mt_fernet_key_clear(&other);
}

static void test_fernet_wrong_key(void)
{
    mt_fernet_key key, other;
    parse_key(&key, VKEY);
    char other_text[45];
    CHECK_OK(mt_fernet_keygen(other_text, NULL), NULL);
    parse_key(&other, other_text);
    mt_buf tok;
    mt_buf_init(&tok, false);
    CHECK_OK(mt_fernet_encrypt(&key, (const uint8_t *)"hi", 2, T0, NULL, &tok, NULL), NULL);
    expect_reject(&other, (const char *)tok.data, tok.len, 0, T0, "mac");
    mt_buf_clear(&tok);
    mt_fernet_key_clear(&key);
    mt_fernet_key_clear(&other);
}

// ---------------------------------------------------------------- base64url

static void expect_b64(const char *bytes, size_t n, const char *text)
{
    mt_buf b;
    mt_buf_init(&b, false);
    CHECK_OK(mt_b64url_encode((const uint8_t *)bytes, n, &b), NULL);
    CHECK_STR_EQ((const char *)b.data, text);
    mt_buf_reset(&b);
    CHECK_OK(mt_b64url_decode(text, strlen(text), &b), NULL);
    CHECK_EQ(b.len, n);
    CHECK_MEM_EQ(b.data, bytes, n);
    mt_buf_clear(&b);
}

static void test_fernet_b64_good(void)
{
    // RFC 4648 section 10, plus the two characters base64url changes.
    expect_b64("", 0, "");
    expect_b64("f", 1, "Zg==");
    expect_b64("fo", 2, "Zm8=");
    expect_b64("foo", 3, "Zm9v");
    expect_b64("foob", 4, "Zm9vYg==");
    expect_b64("fooba", 5, "Zm9vYmE=");
    expect_b64("foobar", 6, "Zm9vYmFy");
    expect_b64("\xfb\xff", 2, "-_8=");
    expect_b64("\0\0\0", 3, "AAAA");
    // Decoding appends and keeps the NUL after the last byte.
    mt_buf b;
    mt_buf_init(&b, false);
    CHECK_OK(mt_buf_append_str(&b, "x:"), NULL);
    CHECK_OK(mt_b64url_decode("Zm9v", 4, &b), NULL);
    CHECK_STR_EQ((const char *)b.data, "x:foo");
    mt_buf_clear(&b);
}

#define LIT(s)           \
    {                    \
        s, sizeof(s) - 1 \
    }

static const struct {
    const char *s;
    size_t n;
} b64_bad[] = {
    LIT("Zm9vYmE"),           // missing padding
    LIT("Zg"),                // missing padding
    LIT("Zm9+"),              // '+' (standard base64)
    LIT("Zm9/"),              // '/'
    LIT("Zm9v\nYmFy"),        // newline inside
    LIT("Zm9v    YmFy"),      // spaces inside, length still a multiple of 4
    LIT("Zm9 "),              // space in a group
    LIT(" Zm9vYmE"),          // leading space
    LIT("Zm9vYmE=\n\n\n\n"),  // trailing whitespace
    LIT("Zg==Zm9v"),          // text after the padding
    LIT("Zh=="),              // unused bits set (one byte)
    LIT("Zm9="),              // unused bits set (two bytes)
    LIT("Z==="),              // three '='
    LIT("===="),              // only padding
    LIT("=Zg="),              // '=' first
    LIT("Zg=A"),              // '=' in the middle
    LIT("Zm9vY*=="),          // outside the alphabet
    LIT("Zm9v\0Zm9"),         // NUL inside
};

static void test_fernet_b64_strict(void)
{
    mt_buf b;
    mt_buf_init(&b, false);
    CHECK_OK(mt_buf_append_str(&b, "keep"), NULL);
    for (size_t i = 0; i < sizeof b64_bad / sizeof b64_bad[0]; i++) {
        if (mt_b64url_decode(b64_bad[i].s, b64_bad[i].n, &b) != MT_EINVAL) {
            CHECK_FAIL_("accepted bad base64url #%zu", i);
        }
        CHECK_STR_EQ((const char *)b.data, "keep");  // untouched on failure
    }
    mt_buf_clear(&b);
}

// The PR #11 cases of the spec, applied to the official token, and every
// single-character corruption of it: all must fail, none may yield bytes.
static void test_fernet_token_corruption(void)
{
    json_t *root = load_vectors("verify.json");
    json_t *c = json_array_get(root, 0);
    const char *good = field(c, "token");
    size_t len = strlen(good);
    int64_t now = parse_rfc3339(field(c, "now"));
    mt_fernet_key key;
    parse_key(&key, field(c, "secret"));
    mt_buf t;
    mt_buf_init(&t, false);
    CHECK_OK(mt_buf_printf(&t, "%strailingdata", good), NULL);
    expect_reject(&key, (const char *)t.data, t.len, 60, now, "base64");
    // Characters outside the alphabet, standard base64's '+' and '/', and
    // whitespace, each in place of one character so the length stays 100.
    const char *swaps = "+/*!?@ \n\t";
    for (size_t s = 0; swaps[s] != '\0'; s++) {
        mt_buf_reset(&t);
        CHECK_OK(mt_buf_append_str(&t, good), NULL);
        t.data[10 + 7 * s] = (uint8_t)swaps[s];
        expect_reject(&key, (const char *)t.data, t.len, 60, now, "base64");
    }
    CHECK(len == 100 && strcmp(good + 96, "DA==") == 0);
    mt_buf_reset(&t);
    CHECK_OK(mt_buf_append_str(&t, good), NULL);
    t.data[97] = 'B';  // "DB==": same bytes to a lenient decoder
    expect_reject(&key, (const char *)t.data, t.len, 60, now, "base64");
    expect_reject(&key, good, len - 2, 60, now, "base64");  // padding stripped
    for (size_t i = 0; i < len; i++) {
        for (const char *r = "AQg_-="; *r != '\0'; r++) {
            if (*r == good[i]) {
                continue;
            }
            mt_buf_reset(&t);
            CHECK_OK(mt_buf_append_str(&t, good), NULL);
            t.data[i] = (uint8_t)*r;
            mt_buf plain;
            mt_buf_init(&plain, true);
            int rc =
                mt_fernet_decrypt(&key, (const char *)t.data, t.len, 0, now, &plain, NULL, NULL);
            if (rc != MT_ECRYPTO || plain.len != 0) {
                CHECK_FAIL_("token with char %zu set to '%c' was accepted", i, *r);
            }
            mt_buf_clear(&plain);
        }
    }
    mt_buf_clear(&t);
    mt_fernet_key_clear(&key);
    json_decref(root);
}

// ---------------------------------------------------------------- keys

// True when any 6 consecutive characters of text appear in msg.
static bool leaks(const char *msg, const char *text, size_t len)
{
    for (size_t i = 0; i + 6 <= len; i++) {
        for (const char *m = msg; *m != '\0'; m++) {
            if (strncmp(m, text + i, 6) == 0) {
                return true;
            }
        }
    }
    return false;
}

static void expect_bad_key(const char *text, size_t len, const char *phrase)
{
    mt_fernet_key key;
    mt_err err = {0};
    CHECK_EQ(mt_fernet_key_parse(&key, text, len, &err), MT_EINVAL);
    const char *msg = mt_err_msg(&err);
    if (strstr(msg, phrase) == NULL || strstr(msg, "moontask keygen") == NULL) {
        CHECK_FAIL_("key error \"%s\" lacks \"%s\"", msg, phrase);
    }
    CHECK(!leaks(msg, text, len));
    static const mt_fernet_key zero;
    CHECK_MEM_EQ(&key, &zero, sizeof key);
    mt_err_clear(&err);
}

static void bad_key_at(size_t pos, char c, const char *phrase)
{
    char k[sizeof VKEY];
    memcpy(k, VKEY, sizeof VKEY);
    k[pos] = c;
    expect_bad_key(k, 44, phrase);
}

static void test_fernet_key_parse(void)
{
    mt_fernet_key key;
    parse_key(&key, VKEY);
    mt_buf raw;
    mt_buf_init(&raw, true);
    CHECK_OK(mt_b64url_decode(VKEY, 44, &raw), NULL);
    CHECK_MEM_EQ(key.signing, raw.data, 16);
    CHECK_MEM_EQ(key.encryption, raw.data + 16, 16);
    mt_buf_clear(&raw);
    mt_fernet_key_clear(&key);
    static const mt_fernet_key zero;
    CHECK_MEM_EQ(&key, &zero, sizeof key);

    expect_bad_key(VKEY, 43, "expected 44 characters of base64url (got 43)");
    expect_bad_key("", 0, "(got 0)");
    expect_bad_key(VKEY "\n", 45, "(got 45)");
    expect_bad_key(" " VKEY, 45, "(got 45)");
    bad_key_at(5, '+', "outside the base64url alphabet at position 6");
    bad_key_at(0, '/', "at position 1");
    bad_key_at(20, ' ', "at position 21");
    bad_key_at(43, '\n', "at position 44");
    bad_key_at(43, 'A', "padding is wrong");  // missing '='
    bad_key_at(10, '=', "padding is wrong");
    bad_key_at(42, '5', "padding is wrong");  // '4' -> '5': unused bits set
}

static void test_fernet_keygen(void)
{
    char a[45], b[45];
    mt_err err = {0};
    CHECK_OK(mt_fernet_keygen(a, &err), &err);
    CHECK_OK(mt_fernet_keygen(b, &err), &err);
    CHECK_EQ(strlen(a), 44);
    CHECK_EQ(strlen(b), 44);
    CHECK(a[43] == '=');
    CHECK(strcmp(a, b) != 0);
    mt_fernet_key ka, kb;
    parse_key(&ka, a);
    parse_key(&kb, b);
    mt_buf tok;
    mt_buf_init(&tok, false);
    CHECK_OK(mt_fernet_encrypt(&ka, (const uint8_t *)"k", 1, T0, NULL, &tok, &err), &err);
    expect_plain(&ka, (const char *)tok.data, tok.len, 0, T0, "k", 1);
    mt_buf_clear(&tok);
    mt_fernet_key_clear(&ka);
    mt_fernet_key_clear(&kb);
}

// ---------------------------------------------------------------- round trips

static void round_trip(const mt_fernet_key *key, const uint8_t *p, size_t n)
{
    mt_buf tok, raw;
    mt_buf_init(&tok, false);
    mt_buf_init(&raw, false);
    mt_err err = {0};
    CHECK_OK(mt_fernet_encrypt(key, p, n, T0, NULL, &tok, &err), &err);
    CHECK_EQ(strlen((const char *)tok.data), tok.len);
    // 57 + 16k bytes, k >= 1; '=' count follows k mod 3 (vectors README).
    CHECK_OK(mt_b64url_decode((const char *)tok.data, tok.len, &raw), NULL);
    size_t k = n / 16 + 1;
    CHECK_EQ(raw.len, 57 + 16 * k);
    size_t eq = k % 3 == 0 ? 0 : (k % 3 == 1 ? 2 : 1);
    CHECK_EQ(tok.len - strcspn((const char *)tok.data, "="), eq);
    expect_plain(key, (const char *)tok.data, tok.len, 60, T0, p, n);
    mt_buf_clear(&tok);
    mt_buf_clear(&raw);
}

static void test_fernet_round_trip(void)
{
    mt_fernet_key key;
    parse_key(&key, VKEY);
    size_t big = (size_t)1 << 20;
    mt_buf data;
    mt_buf_init(&data, true);
    CHECK_OK(mt_buf_reserve(&data, big), NULL);
    CHECK_OK(mt_random_bytes(data.data, big), NULL);
    round_trip(&key, NULL, 0);
    round_trip(&key, (const uint8_t *)"", 0);
    for (size_t n = 1; n <= 49; n++) {
        round_trip(&key, data.data, n);
    }
    round_trip(&key, data.data, big);
    mt_buf_clear(&data);
    mt_fernet_key_clear(&key);
}

// Random IVs: the same message twice gives two tokens; decrypting appends
// to what the caller's buffer already holds.
static void test_fernet_random_iv_and_append(void)
{
    mt_fernet_key key;
    parse_key(&key, VKEY);
    mt_buf a, b, plain;
    mt_buf_init(&a, false);
    mt_buf_init(&b, false);
    mt_buf_init(&plain, true);
    CHECK_OK(mt_fernet_encrypt(&key, (const uint8_t *)"same", 4, T0, NULL, &a, NULL), NULL);
    CHECK_OK(mt_fernet_encrypt(&key, (const uint8_t *)"same", 4, T0, NULL, &b, NULL), NULL);
    CHECK(strcmp((const char *)a.data, (const char *)b.data) != 0);
    CHECK_OK(mt_buf_append_str(&plain, "pre:"), NULL);
    CHECK_OK(mt_fernet_decrypt(&key, (const char *)b.data, b.len, 0, T0, &plain, NULL, NULL), NULL);
    CHECK_STR_EQ((const char *)plain.data, "pre:same");
    mt_buf_clear(&a);
    mt_buf_clear(&b);
    mt_buf_clear(&plain);
    mt_fernet_key_clear(&key);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FERNET_VECTORS_DIR\n", argv[0]);
        return 2;
    }
    vectors_dir = argv[1];
    RUN(test_fernet_rfc3339);
    RUN(test_fernet_generate_vectors);
    RUN(test_fernet_verify_vectors);
    RUN(test_fernet_invalid_vectors);
    RUN(test_fernet_forged_version);
    RUN(test_fernet_forged_length);
    RUN(test_fernet_forged_padding);
    RUN(test_fernet_rejected_plaintext_wiped);
    RUN(test_fernet_forged_time);
    RUN(test_fernet_time_boundaries);
    RUN(test_fernet_no_ttl);
    RUN(test_fernet_check_order);
    RUN(test_fernet_wrong_key);
    RUN(test_fernet_b64_good);
    RUN(test_fernet_b64_strict);
    RUN(test_fernet_token_corruption);
    RUN(test_fernet_key_parse);
    RUN(test_fernet_keygen);
    RUN(test_fernet_round_trip);
    RUN(test_fernet_random_iv_and_append);
    return 0;
}
