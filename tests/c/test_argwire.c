/*
 * test_argwire: the Lua-free wire reader. Wire bytes are built here with
 * msgpack_packer (as lua_args writes them), then rendered as JSON,
 * checked for corruption handling and scanned for strings.
 */
// SPDX-License-Identifier: MIT
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "argwire.h"
#include "buf.h"
#include "check.h"
#include "err.h"

typedef struct wire {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} wire;

static void w_init(wire *w)
{
    msgpack_sbuffer_init(&w->sb);
    msgpack_packer_init(&w->pk, &w->sb, msgpack_sbuffer_write);
}

static void w_free(wire *w)
{
    msgpack_sbuffer_destroy(&w->sb);
}

static void w_str(wire *w, const char *s)
{
    msgpack_pack_str_with_body(&w->pk, s, strlen(s));
}

static const uint8_t *w_data(const wire *w)
{
    return (const uint8_t *)w->sb.data;
}

static void expect_json(const uint8_t *p, size_t len, const char *want)
{
    mt_err err = {0};
    char *json = NULL;
    CHECK_OK(mt_args_to_json(p, len, &json, &err), &err);
    CHECK_STR_EQ(json, want);
    free(json);
    mt_err_clear(&err);
}

static void expect_corrupt(const uint8_t *p, size_t len, const char *want_msg)
{
    mt_err err = {0};
    char *json = (char *)"untouched";
    CHECK_EQ(mt_args_to_json(p, len, &json, &err), MT_ECORRUPT);
    CHECK(json == NULL);
    CHECK(strncmp(mt_err_msg(&err), "stored arguments are corrupt: ", 30) == 0);
    if (want_msg != NULL) {
        CHECK_STR_EQ(mt_err_msg(&err), want_msg);
    }
    mt_err_clear(&err);
    mt_buf list;
    mt_buf_init(&list, true);
    CHECK_EQ(mt_args_collect_strings(p, len, 0, &list, &err), MT_ECORRUPT);
    CHECK_EQ(list.len, 0);
    mt_buf_clear(&list);
    mt_err_clear(&err);
}

static void test_argwire_scalars(void)
{
    wire w;
    w_init(&w);
    msgpack_pack_array(&w.pk, 12);
    msgpack_pack_nil(&w.pk);
    msgpack_pack_true(&w.pk);
    msgpack_pack_false(&w.pk);
    msgpack_pack_int64(&w.pk, 0);
    msgpack_pack_int64(&w.pk, 200);
    msgpack_pack_int64(&w.pk, -1);
    msgpack_pack_int64(&w.pk, -40000);
    msgpack_pack_int64(&w.pk, INT64_MIN);
    msgpack_pack_int64(&w.pk, INT64_MAX);
    msgpack_pack_uint64(&w.pk, 1u << 31);
    w_str(&w, "h\xc3\xa9llo \"q\"\n");
    w_str(&w, "");
    expect_json(w_data(&w), w.sb.size,
                "[null,true,false,0,200,-1,-40000,-9223372036854775808,9223372036854775807,"
                "2147483648,\"h\xc3\xa9llo \\\"q\\\"\\n\",\"\"]");
    w_free(&w);
}

static void test_argwire_floats(void)
{
    wire w;
    w_init(&w);
    msgpack_pack_array(&w.pk, 8);
    msgpack_pack_double(&w.pk, 1.5);
    msgpack_pack_double(&w.pk, 0.1);
    msgpack_pack_double(&w.pk, 100.0);
    msgpack_pack_double(&w.pk, -2.0);
    msgpack_pack_double(&w.pk, INFINITY);
    msgpack_pack_double(&w.pk, -INFINITY);
    msgpack_pack_double(&w.pk, NAN);
    msgpack_pack_float(&w.pk, 0.25f);
    expect_json(w_data(&w), w.sb.size, "[1.5,0.1,100.0,-2.0,\"inf\",\"-inf\",\"nan\",0.25]");
    w_free(&w);

    // One value needing 17 digits sets the precision for the document.
    w_init(&w);
    msgpack_pack_array(&w.pk, 2);
    msgpack_pack_double(&w.pk, 0.1);
    msgpack_pack_double(&w.pk, 0.1 + 0.2);
    expect_json(w_data(&w), w.sb.size, "[0.10000000000000001,0.30000000000000004]");
    w_free(&w);

    // Uint64 above INT64_MAX (never written by lua_args) becomes a real.
    w_init(&w);
    msgpack_pack_array(&w.pk, 2);
    msgpack_pack_uint64(&w.pk, UINT64_MAX);
    msgpack_pack_double(&w.pk, 1e300);
    expect_json(w_data(&w), w.sb.size, "[1.8446744073709552e19,1.0000000000000001e300]");
    w_free(&w);

    CHECK_EQ(mt_real_digits(0.1), 1);
    CHECK_EQ(mt_real_digits(100.0), 3);
    CHECK_EQ(mt_real_digits(1.0 / 3), 16);
    CHECK_EQ(mt_real_digits(0.1 + 0.2), 17);
    CHECK_EQ(mt_real_digits(NAN), 17);
}

static void test_argwire_bin_and_base64(void)
{
    wire w;
    w_init(&w);
    msgpack_pack_array(&w.pk, 6);
    const char *in[] = {"", "f", "fo", "foo", "foob"};
    for (int i = 0; i < 5; i++) {
        msgpack_pack_bin_with_body(&w.pk, in[i], strlen(in[i]));
    }
    // A str that is not valid UTF-8 is shown like bin.
    msgpack_pack_str_with_body(&w.pk, "a\0\xff", 3);
    expect_json(w_data(&w), w.sb.size,
                "[{\"$base64\":\"\"},{\"$base64\":\"Zg==\"},{\"$base64\":\"Zm8=\"},"
                "{\"$base64\":\"Zm9v\"},{\"$base64\":\"Zm9vYg==\"},{\"$base64\":\"YQD/\"}]");
    w_free(&w);

    // A NUL inside valid UTF-8 stays a string.
    w_init(&w);
    msgpack_pack_array(&w.pk, 1);
    msgpack_pack_str_with_body(&w.pk, "a\0b", 3);
    expect_json(w_data(&w), w.sb.size, "[\"a\\u0000b\"]");
    w_free(&w);
}

static void test_argwire_containers(void)
{
    wire w;
    w_init(&w);
    msgpack_pack_array(&w.pk, 3);
    msgpack_pack_map(&w.pk, 6);
    w_str(&w, "a");
    msgpack_pack_array(&w.pk, 3);
    msgpack_pack_int64(&w.pk, 1);
    msgpack_pack_nil(&w.pk);
    msgpack_pack_map(&w.pk, 1);
    w_str(&w, "b");
    msgpack_pack_double(&w.pk, 2.5);
    msgpack_pack_int64(&w.pk, -7);
    w_str(&w, "neg");
    msgpack_pack_double(&w.pk, 1.5);
    msgpack_pack_true(&w.pk);
    msgpack_pack_true(&w.pk);
    msgpack_pack_int64(&w.pk, 2);
    msgpack_pack_bin_with_body(&w.pk, "k\xff", 2);
    msgpack_pack_nil(&w.pk);
    w_str(&w, "z");
    msgpack_pack_map(&w.pk, 0);
    msgpack_pack_array(&w.pk, 0);
    msgpack_pack_map(&w.pk, 0);
    expect_json(w_data(&w), w.sb.size,
                "[{\"-7\":\"neg\",\"1.5\":true,\"a\":[1,null,{\"b\":2.5}],"
                "\"k\xef\xbf\xbd\":null,\"true\":2,\"z\":{}},[],{}]");
    w_free(&w);

    w_init(&w);
    msgpack_pack_array(&w.pk, 0);
    expect_json(w_data(&w), w.sb.size, "[]");
    w_free(&w);
}

// n nested arrays inside the argument array, innermost holding 1.
static void pack_nested(wire *w, int n)
{
    w_init(w);
    msgpack_pack_array(&w->pk, 1);
    for (int i = 0; i < n; i++) {
        msgpack_pack_array(&w->pk, 1);
    }
    msgpack_pack_int64(&w->pk, 1);
}

static void test_argwire_depth(void)
{
    wire w;
    pack_nested(&w, MT_WIRE_MAX_DEPTH);
    mt_err err = {0};
    char *json = NULL;
    CHECK_OK(mt_args_to_json(w_data(&w), w.sb.size, &json, &err), &err);
    CHECK_EQ(strlen(json), 2 * (MT_WIRE_MAX_DEPTH + 1) + 1);
    free(json);
    w_free(&w);
    pack_nested(&w, MT_WIRE_MAX_DEPTH + 1);
    expect_corrupt(w_data(&w), w.sb.size,
                   "stored arguments are corrupt: nested deeper than 64 levels at byte 65");
    w_free(&w);
}

static void test_argwire_corrupt(void)
{
    expect_corrupt((const uint8_t *)"", 0, "stored arguments are corrupt: cut off at byte 0");
    expect_corrupt((const uint8_t *)"\x81\xa1k\x01", 4,
                   "stored arguments are corrupt: the top level is not an array");
    expect_corrupt((const uint8_t *)"\x05", 1, NULL);
    expect_corrupt((const uint8_t *)"\x91\x01\x02", 3,
                   "stored arguments are corrupt: 1 trailing bytes after the argument array");
    expect_corrupt((const uint8_t *)"\x91\xc1", 2,
                   "stored arguments are corrupt: unsupported type byte 0xc1 at byte 1");
    expect_corrupt((const uint8_t *)"\x91\xd4\x01\x02", 4, NULL);                // fixext1
    expect_corrupt((const uint8_t *)"\x91\xc7\x01\x01\x02", 5, NULL);            // ext8
    expect_corrupt((const uint8_t *)"\x91\x81\xc0\x01", 4, NULL);                // nil key
    expect_corrupt((const uint8_t *)"\x91\x81\x90\x01", 4, NULL);                // array key
    expect_corrupt((const uint8_t *)"\x91\x81\xcb\x7f\xf8\0\0\0\0\0\0\x01", 12,  // NaN key
                   "stored arguments are corrupt: map key at byte 2 is NaN");
    expect_corrupt((const uint8_t *)"\x91\xa5\x61\x62\x63", 5,
                   "stored arguments are corrupt: string of 5 bytes at byte 1 is cut off");
    // A forged count must be refused before anything is allocated for it.
    expect_corrupt((const uint8_t *)"\xdd\x10\0\0\0\xc0", 6,
                   "stored arguments are corrupt: container at byte 0 claims 268435456 items "
                   "but 1 bytes remain");
    expect_corrupt((const uint8_t *)"\x91\xdf\xff\xff\xff\xff\xc0\xc0", 8, NULL);
    expect_corrupt((const uint8_t *)"\x91\xcb\0\0", 4,
                   "stored arguments are corrupt: cut off at byte 1");

    // Every proper prefix of a valid encoding is corrupt.
    wire w;
    w_init(&w);
    msgpack_pack_array(&w.pk, 2);
    msgpack_pack_map(&w.pk, 2);
    w_str(&w, "key");
    msgpack_pack_array(&w.pk, 2);
    msgpack_pack_int64(&w.pk, 1 << 20);
    msgpack_pack_double(&w.pk, 2.5);
    msgpack_pack_int64(&w.pk, 3);
    msgpack_pack_bin_with_body(&w.pk, "\x01\x02\x03", 3);
    w_str(&w, "a string long enough to need a str8 header, 32+ bytes");
    for (size_t cut = 0; cut < w.sb.size; cut++) {
        expect_corrupt(w_data(&w), cut, NULL);
    }
    w_free(&w);
}

// Mutated and random inputs must never crash or leak (run under ASan).
static void test_argwire_garbage(void)
{
    wire w;
    w_init(&w);
    msgpack_pack_array(&w.pk, 3);
    msgpack_pack_map(&w.pk, 2);
    w_str(&w, "k");
    msgpack_pack_array(&w.pk, 2);
    msgpack_pack_double(&w.pk, 1.25);
    msgpack_pack_bin_with_body(&w.pk, "\xff\xfe", 2);
    msgpack_pack_int64(&w.pk, 9);
    msgpack_pack_int64(&w.pk, -300000);
    w_str(&w, "text");
    msgpack_pack_nil(&w.pk);
    uint8_t buf[64];
    CHECK(w.sb.size <= sizeof buf);
    unsigned seed = 12345;
    for (int round = 0; round < 200000; round++) {
        size_t n = w.sb.size;
        memcpy(buf, w.sb.data, n);
        seed = seed * 1103515245u + 12345u;
        if (round % 4 == 0) {
            n = (seed >> 8) % sizeof buf;
            for (size_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                buf[i] = (uint8_t)(seed >> 16);
            }
        } else {
            for (int k = 0; k < 1 + round % 3; k++) {
                seed = seed * 1103515245u + 12345u;
                buf[(seed >> 8) % n] = (uint8_t)(seed >> 20);
            }
        }
        mt_err err = {0};
        char *json = NULL;
        int rc = mt_args_to_json(buf, n, &json, &err);
        CHECK(rc == MT_OK || rc == MT_ECORRUPT);
        CHECK((rc == MT_OK) == (json != NULL));
        free(json);
        mt_buf list;
        mt_buf_init(&list, true);
        int rc2 = mt_args_collect_strings(buf, n, 1, &list, &err);
        CHECK_EQ(rc2, rc);
        mt_buf_clear(&list);
        mt_err_clear(&err);
    }
    w_free(&w);
}

// Reads the next [uint32 len][bytes][NUL] record from list at *at.
static void expect_record(const mt_buf *list, size_t *at, const void *want, uint32_t want_len)
{
    uint32_t n;
    CHECK(*at + sizeof n <= list->len);
    memcpy(&n, list->data + *at, sizeof n);
    CHECK_EQ(n, want_len);
    *at += sizeof n;
    CHECK(*at + n + 1 <= list->len);
    CHECK_MEM_EQ(list->data + *at, want, n);
    CHECK_EQ(list->data[*at + n], 0);
    *at += n + 1;
}

static void test_argwire_collect_strings(void)
{
    wire w;
    w_init(&w);
    msgpack_pack_array(&w.pk, 4);
    w_str(&w, "top-secret");
    w_str(&w, "abc");  // shorter than min_len
    msgpack_pack_map(&w.pk, 2);
    w_str(&w, "password_key_name");  // keys are not collected
    msgpack_pack_array(&w.pk, 2);
    msgpack_pack_int64(&w.pk, 12345678);
    w_str(&w, "nested-value");
    w_str(&w, "k");
    msgpack_pack_bin_with_body(&w.pk, "b\0in\xff", 5);
    msgpack_pack_double(&w.pk, 1.5);

    mt_buf list;
    mt_buf_init(&list, true);
    mt_err err = {0};
    CHECK_OK(mt_args_collect_strings(w_data(&w), w.sb.size, 4, &list, &err), &err);
    size_t at = 0;
    expect_record(&list, &at, "top-secret", 10);
    // Map values follow wire order: the key's value, then the next pair.
    expect_record(&list, &at, "nested-value", 12);
    expect_record(&list, &at, "b\0in\xff", 5);
    CHECK_EQ(at, list.len);

    // Appends after what is already there; min_len 0 takes everything.
    size_t before = list.len;
    CHECK_OK(mt_args_collect_strings(w_data(&w), w.sb.size, 0, &list, &err), &err);
    at = before;
    expect_record(&list, &at, "top-secret", 10);
    expect_record(&list, &at, "abc", 3);
    expect_record(&list, &at, "nested-value", 12);
    expect_record(&list, &at, "b\0in\xff", 5);
    CHECK_EQ(at, list.len);

    // A failure leaves the list as it was.
    before = list.len;
    CHECK_EQ(mt_args_collect_strings(w_data(&w), w.sb.size - 1, 0, &list, &err), MT_ECORRUPT);
    CHECK_EQ(list.len, before);
    mt_buf_clear(&list);
    mt_err_clear(&err);
    w_free(&w);
}

static void test_argwire_utf8(void)
{
    CHECK(mt_utf8_valid((const uint8_t *)"", 0));
    CHECK(mt_utf8_valid((const uint8_t *)"a\0b", 3));
    CHECK(mt_utf8_valid((const uint8_t *)"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
    CHECK(mt_utf8_valid((const uint8_t *)"\xf4\x8f\xbf\xbf", 4));   // U+10FFFF
    CHECK(!mt_utf8_valid((const uint8_t *)"\xc0\x80", 2));          // overlong NUL
    CHECK(!mt_utf8_valid((const uint8_t *)"\xe0\x80\x80", 3));      // overlong
    CHECK(!mt_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3));      // surrogate
    CHECK(!mt_utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4));  // above U+10FFFF
    CHECK(!mt_utf8_valid((const uint8_t *)"\xe2\x82", 2));          // cut off
    CHECK(!mt_utf8_valid((const uint8_t *)"\x80", 1));              // stray continuation
    CHECK(!mt_utf8_valid((const uint8_t *)"\xff", 1));
}

int main(void)
{
    RUN(test_argwire_scalars);
    RUN(test_argwire_floats);
    RUN(test_argwire_bin_and_base64);
    RUN(test_argwire_containers);
    RUN(test_argwire_depth);
    RUN(test_argwire_corrupt);
    RUN(test_argwire_garbage);
    RUN(test_argwire_collect_strings);
    RUN(test_argwire_utf8);
    return 0;
}
