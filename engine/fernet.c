/*
 * fernet: Fernet keys and tokens (version 0x80, github.com/fernet/spec) on
 * OpenSSL 3's EVP layer, plus the strict base64url codec they are written in
 * and the process's source of random bytes.
 *
 * Owns: key parsing and generation, encrypt, verify-then-decrypt, strict
 * base64url, the CSPRNG. Must not know Lua, SQLite, or where keys and tokens
 * are kept. Called by the worker and store paths (tokens), the CLI (keygen)
 * and the Lua bindings (keys). This is the only unit that includes OpenSSL
 * headers; fernet.h exposes none of its types.
 *
 * A decoded token is laid out as
 *   0x80 | timestamp (8, big-endian) | IV (16) | ciphertext (16k, k >= 1) | MAC (32)
 * where MAC = HMAC-SHA256(signing key, every byte before it) and the
 * ciphertext is AES-128-CBC of the PKCS7-padded plaintext under the
 * encryption key.
 */
// SPDX-License-Identifier: MIT
#include "fernet.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

enum {
    VERSION = 0x80,
    TS_OFF = 1,
    IV_OFF = 9,
    CT_OFF = 25,  // also the length of the header the ciphertext follows
    IV_LEN = 16,
    BLOCK = 16,
    MAC_LEN = 32,
    MIN_RAW = CT_OFF + BLOCK + MAC_LEN,  // 73: PKCS7 never yields an empty ciphertext
    MAX_SKEW = 60,                       // seconds a timestamp may lie ahead of our clock
    KEY_TEXT_LEN = 44,                   // base64url of 32 bytes, one '='
};

// EVP takes lengths as int. Feeding it at most 1 GiB per call keeps every
// call block-aligned, so CBC output per step is exactly its input.
#define EVP_STEP ((size_t)1 << 30)

// Names of the checks a token can fail, for mt_fernet_decrypt's *why. Only
// EXPIRED is compared by address (it maps to its own error code).
static const char EXPIRED[] = "expired";

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// ---------------------------------------------------------------- base64url

// The 6-bit value of a base64url character, or -1. Ranges rather than a
// table so that a negative char can never become an array index.
static int b64_value(char ch)
{
    unsigned char c = (unsigned char)ch;
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '-') {
        return 62;
    }
    if (c == '_') {
        return 63;
    }
    return -1;
}

// Validates text as canonical padded base64url and returns the number of
// '=' (0..2) in *pad. Canonical means exactly one text per byte string:
// anything lenient decoders forgive ('+', '/', whitespace, text after the
// padding, unused bits set) would let two different tokens carry one
// payload, and lets junk through that a strict peer would refuse.
static int b64_check(const char *text, size_t len, size_t *pad)
{
    if (len % 4 != 0) {
        return MT_EINVAL;
    }
    *pad = 0;
    if (len > 0 && text[len - 1] == '=') {
        *pad = text[len - 2] == '=' ? 2 : 1;
    }
    // An '=' anywhere before the final one or two fails here, as does a third.
    for (size_t i = 0; i < len - *pad; i++) {
        if (b64_value(text[i]) < 0) {
            return MT_EINVAL;
        }
    }
    // The last data character carries 2 (one '=') or 4 (two '=') bits that
    // belong to no byte; an encoder always leaves them zero.
    if (*pad > 0) {
        int unused = b64_value(text[len - *pad - 1]) & (*pad == 1 ? 0x3 : 0xf);
        if (unused != 0) {
            return MT_EINVAL;
        }
    }
    return MT_OK;
}

int mt_b64url_decode(const char *text, size_t len, mt_buf *out)
{
    if (out == NULL || (text == NULL && len > 0)) {
        return MT_EINVAL;
    }
    size_t pad = 0;
    int rc = b64_check(text, len, &pad);
    if (rc != MT_OK) {
        return rc;  // out untouched: nothing is written before the text is known good
    }
    size_t n = len / 4 * 3 - pad;
    rc = mt_buf_reserve(out, n);
    if (rc != MT_OK) {
        return rc;
    }
    uint8_t *dst = out->data + out->len;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len - pad; i++) {
        acc = (acc << 6) | (uint32_t)b64_value(text[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *dst++ = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    out->len += n;
    out->data[out->len] = 0;
    return MT_OK;
}

int mt_b64url_encode(const uint8_t *p, size_t n, mt_buf *out)
{
    if (out == NULL || (p == NULL && n > 0)) {
        return MT_EINVAL;
    }
    if (n / 3 >= SIZE_MAX / 4 - 1) {
        return MT_ENOMEM;
    }
    size_t tlen = (n + 2) / 3 * 4;
    int rc = mt_buf_reserve(out, tlen);
    if (rc != MT_OK) {
        return rc;
    }
    char *dst = (char *)out->data + out->len;
    size_t i = 0;
    for (; n - i >= 3; i += 3, dst += 4) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        dst[0] = B64URL[v >> 18];
        dst[1] = B64URL[(v >> 12) & 63];
        dst[2] = B64URL[(v >> 6) & 63];
        dst[3] = B64URL[v & 63];
    }
    if (n - i > 0) {
        bool two = n - i == 2;
        uint32_t v = (uint32_t)p[i] << 16 | (two ? (uint32_t)p[i + 1] << 8 : 0);
        dst[0] = B64URL[v >> 18];
        dst[1] = B64URL[(v >> 12) & 63];
        dst[2] = two ? B64URL[(v >> 6) & 63] : '=';
        dst[3] = '=';
    }
    out->len += tlen;
    out->data[out->len] = 0;
    return MT_OK;
}

// ---------------------------------------------------------------- OpenSSL

int mt_random_bytes(uint8_t *p, size_t n)
{
    if (p == NULL && n > 0) {
        return MT_EINVAL;
    }
    while (n > 0) {
        int step = n > INT_MAX ? INT_MAX : (int)n;
        if (RAND_bytes(p, step) != 1) {
            ERR_clear_error();
            return MT_ECRYPTO;
        }
        p += step;
        n -= (size_t)step;
    }
    return MT_OK;
}

// Records an OpenSSL failure in err and empties the thread's error queue so
// that a later, unrelated failure does not report this one. OpenSSL's
// reason strings are static texts and never contain our data.
static int ossl_fail(mt_err *err, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    int rc = mt_err_set(err, MT_ECRYPTO, "%s failed inside OpenSSL: %s", what,
                        reason != NULL ? reason : "no reason given");
    ERR_clear_error();
    return rc;
}

// OpenSSL 3 looks an algorithm up by name on every implicit use (EVP_Q_mac,
// EVP_aes_128_cbc()): fetched once here, that cost leaves the per-task path.
// Process-lifetime objects, shared read-only by all threads.
static EVP_MAC_CTX *hmac_template;  // HMAC with SHA-256 chosen, no key yet
static EVP_CIPHER *aes_cbc;
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_algorithms(void)
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (ctx != NULL && EVP_MAC_CTX_set_params(ctx, params) == 1) {
        hmac_template = ctx;
    } else {
        EVP_MAC_CTX_free(ctx);
    }
    EVP_MAC_free(mac);  // the context keeps its own reference
    aes_cbc = EVP_CIPHER_fetch(NULL, "AES-128-CBC", NULL);
    ERR_clear_error();  // a failed fetch falls back to the implicit path below
}

static int hmac_sha256(const uint8_t signing[16], const uint8_t *p, size_t n, uint8_t mac[MAC_LEN])
{
    size_t got = 0;
    pthread_once(&fetch_once, fetch_algorithms);
    if (hmac_template == NULL) {
        if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, signing, 16, p, n, mac, MAC_LEN, &got) ==
                NULL ||
            got != MAC_LEN) {
            return MT_ECRYPTO;
        }
        return MT_OK;
    }
    int rc = MT_ECRYPTO;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(hmac_template);
    if (ctx == NULL || EVP_MAC_init(ctx, signing, 16, NULL) != 1) {
        goto out;
    }
    for (size_t i = 0; i < n; i += EVP_STEP) {
        size_t step = n - i < EVP_STEP ? n - i : EVP_STEP;
        if (EVP_MAC_update(ctx, p + i, step) != 1) {
            goto out;
        }
    }
    if (EVP_MAC_final(ctx, mac, &got, MAC_LEN) == 1 && got == MAC_LEN) {
        rc = MT_OK;
    }
out:
    EVP_MAC_CTX_free(ctx);  // also wipes the keyed state
    return rc;
}

// AES-128-CBC over n bytes into out, which must have room for n + BLOCK.
// Encryption adds PKCS7 padding; decryption leaves it in place (n is then a
// whole number of blocks) so that a bad pad can be told apart from a
// library failure and reported as such by check_pkcs7.
static int cbc(const uint8_t key[16], const uint8_t iv[IV_LEN], int enc, const uint8_t *in,
               size_t n, uint8_t *out, size_t *out_len)
{
    int rc = MT_ECRYPTO;
    size_t done = 0;
    int got = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        goto out;
    }
    pthread_once(&fetch_once, fetch_algorithms);
    if (EVP_CipherInit_ex2(ctx, aes_cbc != NULL ? aes_cbc : EVP_aes_128_cbc(), key, iv, enc,
                           NULL) != 1) {
        goto out;
    }
    if (!enc && EVP_CIPHER_CTX_set_padding(ctx, 0) != 1) {
        goto out;
    }
    for (size_t i = 0; i < n; i += EVP_STEP) {
        int step = (int)(n - i < EVP_STEP ? n - i : EVP_STEP);
        if (EVP_CipherUpdate(ctx, out + done, &got, in + i, step) != 1) {
            goto out;
        }
        done += (size_t)got;
    }
    if (EVP_CipherFinal_ex(ctx, out + done, &got) != 1) {
        goto out;
    }
    *out_len = done + (size_t)got;
    rc = MT_OK;
out:
    EVP_CIPHER_CTX_free(ctx);  // also wipes the expanded key schedule
    return rc;
}

// ---------------------------------------------------------------- keys

#define KEY_BAD "encryption key is malformed: "
#define KEY_FIX "; generate one with `moontask keygen`"

// Finds the first character that is not where canonical key text would
// have it. Positions in messages count from 1, as editors do; the key
// text itself never appears in a message.
static int key_text_check(const char *text, size_t len, mt_err *err)
{
    if (len != KEY_TEXT_LEN) {
        return mt_err_set(err, MT_EINVAL,
                          KEY_BAD "expected 44 characters of base64url (got %zu)" KEY_FIX, len);
    }
    for (size_t i = 0; i < KEY_TEXT_LEN; i++) {
        bool last = i == KEY_TEXT_LEN - 1;
        if (text[i] == '=' && !last) {
            return mt_err_set(err, MT_EINVAL,
                              KEY_BAD "the padding is wrong ('=' only at the end)" KEY_FIX);
        }
        if (text[i] != '=' && b64_value(text[i]) < 0) {
            return mt_err_set(err, MT_EINVAL,
                              KEY_BAD "contains a character outside the base64url alphabet at "
                                      "position %zu" KEY_FIX,
                              i + 1);
        }
        if (last && text[i] != '=') {
            return mt_err_set(err, MT_EINVAL,
                              KEY_BAD "the padding is wrong (must end in '=')" KEY_FIX);
        }
    }
    return MT_OK;
}

int mt_fernet_key_parse(mt_fernet_key *key, const char *text, size_t len, mt_err *err)
{
    if (key == NULL || (text == NULL && len > 0)) {
        return mt_err_set(err, MT_EINVAL, "mt_fernet_key_parse: missing argument");
    }
    // A failed parse leaves a zero key, never half of one.
    mt_fernet_key_clear(key);
    int rc = key_text_check(text, len, err);
    if (rc != MT_OK) {
        return rc;
    }
    mt_buf raw;
    mt_buf_init(&raw, true);
    rc = mt_b64url_decode(text, len, &raw);
    if (rc == MT_EINVAL) {
        // Only the unused low bits of the last character can still be wrong.
        rc = mt_err_set(
            err, rc, KEY_BAD "the padding is wrong (its last character is not canonical)" KEY_FIX);
        goto out;
    }
    if (rc != MT_OK) {
        rc = mt_err_set(err, rc, "cannot read the encryption key: %s", mt_strerror(rc));
        goto out;
    }
    // 43 checked characters and one '=' always decode to exactly 32 bytes.
    memcpy(key->signing, raw.data, sizeof key->signing);
    memcpy(key->encryption, raw.data + sizeof key->signing, sizeof key->encryption);
out:
    mt_buf_clear(&raw);  // secure: wiped before free
    return rc;
}

void mt_fernet_key_clear(mt_fernet_key *key)
{
    if (key != NULL) {
        OPENSSL_cleanse(key, sizeof *key);
    }
}

int mt_fernet_keygen(char out[45], mt_err *err)
{
    if (out == NULL) {
        return mt_err_set(err, MT_EINVAL, "mt_fernet_keygen: missing argument");
    }
    uint8_t raw[32];  // fixed by the spec, not by user data
    mt_buf text;
    mt_buf_init(&text, true);
    int rc = mt_random_bytes(raw, sizeof raw);
    if (rc != MT_OK) {
        rc = mt_err_set(err, rc, "cannot generate a key: the system random generator failed");
        goto out;
    }
    rc = mt_b64url_encode(raw, sizeof raw, &text);
    if (rc != MT_OK) {
        rc = mt_err_set(err, rc, "cannot generate a key: %s", mt_strerror(rc));
        goto out;
    }
    memcpy(out, text.data, KEY_TEXT_LEN + 1);  // text is NUL-terminated
out:
    OPENSSL_cleanse(raw, sizeof raw);
    mt_buf_clear(&text);
    return rc;
}

// ---------------------------------------------------------------- tokens

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) {
        p[i] = (uint8_t)v;
    }
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

// Appends the encrypted body (header, ciphertext) to raw, whose spare room
// was reserved by the caller.
static int seal(const mt_fernet_key *key, const uint8_t *plain, size_t plain_len, int64_t now,
                const uint8_t *iv, mt_buf *raw)
{
    uint8_t *r = raw->data;
    r[0] = VERSION;
    put_be64(r + TS_OFF, (uint64_t)now);
    if (iv != NULL) {
        memcpy(r + IV_OFF, iv, IV_LEN);
    } else if (mt_random_bytes(r + IV_OFF, IV_LEN) != MT_OK) {
        return MT_ECRYPTO;
    }
    size_t ct_len = 0;
    int rc = cbc(key->encryption, r + IV_OFF, 1, plain, plain_len, r + CT_OFF, &ct_len);
    if (rc != MT_OK) {
        return rc;
    }
    raw->len = CT_OFF + ct_len;
    uint8_t mac[MAC_LEN];
    rc = hmac_sha256(key->signing, r, raw->len, mac);
    if (rc != MT_OK) {
        return rc;
    }
    return mt_buf_append(raw, mac, MAC_LEN);  // room already reserved: cannot fail
}

int mt_fernet_encrypt(const mt_fernet_key *key, const uint8_t *plain, size_t plain_len, int64_t now,
                      const uint8_t *iv, mt_buf *token, mt_err *err)
{
    if (key == NULL || token == NULL || (plain == NULL && plain_len > 0)) {
        return mt_err_set(err, MT_EINVAL, "mt_fernet_encrypt: missing argument");
    }
    if (now < 0) {
        return mt_err_set(err, MT_EINVAL, "cannot encrypt: the clock reads before 1970");
    }
    if (plain_len > SIZE_MAX / 2) {
        return mt_err_set(err, MT_ENOMEM, "cannot encrypt: the message is too large");
    }
    // Only public bytes go in raw: header, ciphertext, MAC. The plaintext
    // goes from the caller's buffer straight into OpenSSL.
    mt_buf raw;
    mt_buf_init(&raw, false);
    int rc = mt_buf_reserve(&raw, CT_OFF + plain_len + 2 * BLOCK + MAC_LEN);
    if (rc != MT_OK) {
        rc = mt_err_set(err, rc, "cannot encrypt: %s", mt_strerror(rc));
        goto out;
    }
    rc = seal(key, plain, plain_len, now, iv, &raw);
    if (rc != MT_OK) {
        rc = ossl_fail(err, "encryption");
        goto out;
    }
    rc = mt_b64url_encode(raw.data, raw.len, token);
    if (rc != MT_OK) {
        rc = mt_err_set(err, rc, "cannot encrypt: %s", mt_strerror(rc));
        goto out;
    }
out:
    mt_buf_clear(&raw);
    return rc;
}

// Version and size, before anything is sliced out of the token. An empty
// decode has no version byte at all and counts as a length failure.
static const char *check_layout(const uint8_t *raw, size_t len)
{
    if (len == 0) {
        return "length";
    }
    if (raw[0] != VERSION) {
        return "version";
    }
    if (len < MIN_RAW || (len - CT_OFF - MAC_LEN) % BLOCK != 0) {
        return "length";
    }
    return NULL;
}

// Age (expired when now - ts > ttl) and clock skew (future when ts > now +
// 60); both boundaries accept, as Python's cryptography does. The timestamp
// is 64 bits an attacker chooses, so this stays in unsigned arithmetic
// where int64_t subtraction could overflow. Runs before the MAC, as the
// spec orders it, and as the vectors need ("far-future TS" carries a valid
// MAC but "expired TTL" is expected to fail as expired either way).
static const char *check_time(uint64_t ts, int64_t ttl, int64_t now)
{
    if (now >= 0 && ts <= UINT64_MAX - (uint64_t)ttl && (uint64_t)now > ts + (uint64_t)ttl) {
        return EXPIRED;
    }
    int64_t limit = now > INT64_MAX - MAX_SKEW ? INT64_MAX : now + MAX_SKEW;
    if (limit < 0 || ts > (uint64_t)limit) {
        return "future";
    }
    return NULL;
}

// Returns MT_OK and leaves *check NULL when the MAC matches.
static int check_mac(const mt_fernet_key *key, const uint8_t *raw, size_t len, const char **check)
{
    uint8_t mac[MAC_LEN];
    size_t body = len - MAC_LEN;
    if (hmac_sha256(key->signing, raw, body, mac) != MT_OK) {
        return MT_ECRYPTO;
    }
    // Constant time: a compare that stops at the first difference tells a
    // forger how many leading bytes of the MAC they already have right.
    if (CRYPTO_memcmp(mac, raw + body, MAC_LEN) != 0) {
        *check = "mac";
    }
    return MT_OK;
}

// The PKCS7 pad length of a decrypted body, or 0 when the pad is malformed.
// Not constant time, and need not be: the MAC was verified first, so no
// padding oracle is reachable with a forged ciphertext.
static size_t pkcs7_pad(const uint8_t *p, size_t n)
{
    size_t pad = p[n - 1];
    if (pad == 0 || pad > BLOCK) {
        return 0;
    }
    for (size_t i = n - pad; i < n; i++) {
        if (p[i] != pad) {
            return 0;
        }
    }
    return pad;
}

// Decrypts straight into the caller's buffer and commits the bytes only
// once the padding is good; a rejected plaintext is wiped where it lies.
static int open_body(const mt_fernet_key *key, const uint8_t *raw, size_t len, mt_buf *plain,
                     const char **check)
{
    size_t ct_len = len - CT_OFF - MAC_LEN;
    int rc = mt_buf_reserve(plain, ct_len + BLOCK);
    if (rc != MT_OK) {
        return rc;
    }
    uint8_t *out = plain->data + plain->len;
    size_t got = 0;
    rc = cbc(key->encryption, raw + IV_OFF, 0, raw + CT_OFF, ct_len, out, &got);
    size_t pad = 0;
    if (rc == MT_OK && got == ct_len) {
        pad = pkcs7_pad(out, got);
        if (pad == 0) {
            *check = "padding";
        }
    } else {
        rc = MT_ECRYPTO;
    }
    if (pad == 0) {
        OPENSSL_cleanse(out, ct_len + BLOCK);
        plain->data[plain->len] = 0;
        return rc;
    }
    plain->len += got - pad;
    plain->data[plain->len] = 0;
    return MT_OK;
}

// Runs the checks after base64 in the spec's order. Returns MT_OK with
// *check naming the first failed check (NULL: plaintext appended), or an
// error code when the library itself failed.
static int open_token(const mt_fernet_key *key, const uint8_t *raw, size_t len, int64_t ttl,
                      int64_t now, mt_buf *plain, const char **check)
{
    *check = check_layout(raw, len);
    if (*check == NULL && ttl > 0) {
        *check = check_time(get_be64(raw + TS_OFF), ttl, now);
    }
    if (*check != NULL) {
        return MT_OK;
    }
    int rc = check_mac(key, raw, len, check);
    if (rc != MT_OK || *check != NULL) {
        return rc;
    }
    return open_body(key, raw, len, plain, check);
}

int mt_fernet_decrypt(const mt_fernet_key *key, const char *token, size_t token_len, int64_t ttl,
                      int64_t now, mt_buf *plain, const char **why, mt_err *err)
{
    if (why != NULL) {
        *why = NULL;
    }
    if (key == NULL || plain == NULL || (token == NULL && token_len > 0)) {
        return mt_err_set(err, MT_EINVAL, "mt_fernet_decrypt: missing argument");
    }
    const char *check = NULL;
    mt_buf raw;
    mt_buf_init(&raw, false);  // the decoded token is public bytes only
    int rc = mt_b64url_decode(token, token_len, &raw);
    if (rc == MT_EINVAL) {
        check = "base64";
        rc = MT_OK;
    } else if (rc == MT_OK) {
        rc = open_token(key, raw.data, raw.len, ttl, now, plain, &check);
    }
    if (rc == MT_ENOMEM) {
        rc = mt_err_set(err, rc, "cannot decrypt: %s", mt_strerror(rc));
        goto out;
    }
    if (rc != MT_OK) {
        rc = ossl_fail(err, "token verification");
        goto out;
    }
    if (check == EXPIRED) {
        rc = mt_err_set(err, MT_EEXPIRED, "token expired");
    } else if (check != NULL) {
        // One text for every rejection: the caller (and a log reader) must
        // not learn whether the MAC or the padding was wrong.
        rc = mt_err_set(err, MT_ECRYPTO, "invalid token");
    }
    if (why != NULL) {
        *why = check;
    }
out:
    mt_buf_clear(&raw);
    return rc;
}
