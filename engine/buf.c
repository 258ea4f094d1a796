/*
 * buf: growable byte buffer; secure buffers never leave stale copies of
 * their bytes in freed memory.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE  // explicit_bzero
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

void mt_wipe(void *p, size_t n)
{
    if (p != NULL && n > 0) {
        explicit_bzero(p, n);
    }
}

void mt_buf_init(mt_buf *b, bool secure)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->secure = secure;
}

void mt_buf_clear(mt_buf *b)
{
    if (b->secure) {
        mt_wipe(b->data, b->cap);
    }
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void mt_buf_reset(mt_buf *b)
{
    if (b->secure) {
        mt_wipe(b->data, b->cap);
    }
    b->len = 0;
    if (b->data != NULL) {
        b->data[0] = 0;
    }
}

int mt_buf_reserve(mt_buf *b, size_t n)
{
    if (n > SIZE_MAX - b->len - 1) {
        return MT_ENOMEM;
    }
    size_t need = b->len + n + 1;
    if (need <= b->cap) {
        return MT_OK;
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    }
    uint8_t *p;
    if (b->secure) {
        // realloc could leave the old copy behind in freed memory.
        p = malloc(cap);
        if (p == NULL) {
            return MT_ENOMEM;
        }
        if (b->data != NULL) {
            memcpy(p, b->data, b->len + 1);
            mt_wipe(b->data, b->cap);
            free(b->data);
        }
    } else {
        p = realloc(b->data, cap);
        if (p == NULL) {
            return MT_ENOMEM;
        }
    }
    if (b->data == NULL) {
        p[0] = 0;
    }
    b->data = p;
    b->cap = cap;
    return MT_OK;
}

int mt_buf_append(mt_buf *b, const void *p, size_t n)
{
    int rc = mt_buf_reserve(b, n);
    if (rc != MT_OK) {
        return rc;
    }
    if (n > 0) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    b->data[b->len] = 0;
    return MT_OK;
}

int mt_buf_append_str(mt_buf *b, const char *s)
{
    return mt_buf_append(b, s, strlen(s));
}

int mt_buf_printf(mt_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return MT_EINVAL;
    }
    int rc = mt_buf_reserve(b, (size_t)n);
    if (rc != MT_OK) {
        return rc;
    }
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return MT_OK;
}

uint8_t *mt_buf_take(mt_buf *b, size_t *len)
{
    uint8_t *p = b->data;
    if (len != NULL) {
        *len = b->len;
    }
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}
