/*
 * err: status codes shared by every engine module, and a detail message
 * carrier (mt_err) for errors a user must read. Knows no library.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_ERR_H
#define MT_ERR_H

enum {
    MT_OK = 0,
    MT_ENOMEM = -1,     // allocation failed
    MT_EIO = -2,        // file or database I/O failed
    MT_EBUSY = -3,      // database locked past the busy timeout
    MT_ECORRUPT = -4,   // stored data is not what we wrote
    MT_EINVAL = -5,     // bad argument or input
    MT_ECRYPTO = -6,    // token invalid, key wrong, or crypto library failure
    MT_ENOTFOUND = -7,  // no such task, key or file
    MT_ESTATE = -8,     // operation not allowed in the object's current state
    MT_EEXPIRED = -9,   // Fernet token older than the TTL asked for
    MT_EREADONLY = -10  // database cannot be written
};

// A detail message for the last failure. Caller-allocated; zero-initialise
// (`mt_err e = {0};`) and release with mt_err_clear.
typedef struct mt_err {
    int code;
    char *msg;  // owned; NULL when no detail was given
} mt_err;

// Static text for a code ("out of memory", ...). Never NULL.
const char *mt_strerror(int code);

// Stores a formatted message in err (replacing any earlier one) and returns
// code, so that failure is one line: `return mt_err_set(err, MT_EIO, ...)`.
// err may be NULL. Messages must never contain keys, tokens or arguments.
int mt_err_set(mt_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// The detail message, or mt_strerror(err->code) when there is none.
const char *mt_err_msg(const mt_err *err);

void mt_err_clear(mt_err *err);

// Name of the code for the Lua `nil, msg, code` triple ("ENOMEM", ...).
const char *mt_errname(int code);

#endif
