/*
 * buf: a growable byte buffer. The secure variant wipes its bytes whenever
 * they are freed or moved, for key material and decrypted plaintext.
 * Knows no library.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_BUF_H
#define MT_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Caller-allocated; zero-initialise or mt_buf_init, release with mt_buf_clear.
typedef struct mt_buf {
    uint8_t *data;  // owned; NUL-terminated after every append (not counted in len)
    size_t len;
    size_t cap;
    bool secure;  // wipe on growth and on clear
} mt_buf;

void mt_buf_init(mt_buf *b, bool secure);
// Frees the bytes (wiping them first when secure); b can be reused after.
void mt_buf_clear(mt_buf *b);
// Keeps the allocation; len becomes 0 (bytes wiped when secure).
void mt_buf_reset(mt_buf *b);
// Makes room for n more bytes. MT_OK or MT_ENOMEM.
int mt_buf_reserve(mt_buf *b, size_t n);
int mt_buf_append(mt_buf *b, const void *p, size_t n);
int mt_buf_append_str(mt_buf *b, const char *s);
int mt_buf_printf(mt_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Hands the bytes to the caller (caller frees with free(), or wipes first if
// secure) and leaves b empty.
uint8_t *mt_buf_take(mt_buf *b, size_t *len);

// Wipes n bytes in a way the compiler may not remove.
void mt_wipe(void *p, size_t n);

#endif
