/*
 * err: status code texts and the mt_err detail message.
 */
// SPDX-License-Identifier: MIT
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *mt_strerror(int code)
{
    switch (code) {
    case MT_OK:
        return "ok";
    case MT_ENOMEM:
        return "out of memory";
    case MT_EIO:
        return "input/output error";
    case MT_EBUSY:
        return "database is locked";
    case MT_ECORRUPT:
        return "stored data is corrupt";
    case MT_EINVAL:
        return "invalid argument";
    case MT_ECRYPTO:
        return "invalid token";
    case MT_ENOTFOUND:
        return "not found";
    case MT_ESTATE:
        return "not allowed in the current state";
    case MT_EEXPIRED:
        return "token expired";
    case MT_EREADONLY:
        return "database is read-only";
    default:
        return "unknown error";
    }
}

const char *mt_errname(int code)
{
    switch (code) {
    case MT_OK:
        return "OK";
    case MT_ENOMEM:
        return "ENOMEM";
    case MT_EIO:
        return "EIO";
    case MT_EBUSY:
        return "EBUSY";
    case MT_ECORRUPT:
        return "ECORRUPT";
    case MT_EINVAL:
        return "EINVAL";
    case MT_ECRYPTO:
        return "ECRYPTO";
    case MT_ENOTFOUND:
        return "ENOTFOUND";
    case MT_ESTATE:
        return "ESTATE";
    case MT_EEXPIRED:
        return "EEXPIRED";
    case MT_EREADONLY:
        return "EREADONLY";
    default:
        return "EUNKNOWN";
    }
}

int mt_err_set(mt_err *err, int code, const char *fmt, ...)
{
    if (err == NULL) {
        return code;
    }
    free(err->msg);
    err->msg = NULL;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return code;
    }
    char *msg = malloc((size_t)n + 1);
    if (msg == NULL) {
        return code;  // the code alone still says what failed
    }
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);
    err->msg = msg;
    return code;
}

const char *mt_err_msg(const mt_err *err)
{
    if (err == NULL) {
        return "unknown error";
    }
    return err->msg != NULL ? err->msg : mt_strerror(err->code);
}

void mt_err_clear(mt_err *err)
{
    if (err != NULL) {
        free(err->msg);
        err->msg = NULL;
        err->code = MT_OK;
    }
}
