/*
 * test_logcap: sink line format and redaction.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE  // mkstemp
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "logcap.h"

static void test_logcap_levels(void)
{
    CHECK_EQ(mt_log_level_parse("debug"), MT_LOG_DEBUG);
    CHECK_EQ(mt_log_level_parse("WARNING"), MT_LOG_WARNING);
    CHECK_EQ(mt_log_level_parse("warn"), MT_LOG_WARNING);
    CHECK_EQ(mt_log_level_parse("loud"), -1);
    CHECK_STR_EQ(mt_log_level_name(MT_LOG_ERROR), "error");
}

static void test_logcap_format(void)
{
    mt_sink_entry e = {.time = 0.25,
                       .level = MT_LOG_WARNING,
                       .task = "charge",
                       .id = "abc",
                       .attempt = 2,
                       .message = "two\nlines",
                       .extras_json = "{\"k\":1}"};
    mt_buf b;
    mt_buf_init(&b, false);
    CHECK_OK(mt_sink_format(&e, &b), NULL);
    CHECK_STR_EQ((char *)b.data,
                 "1970-01-01T00:00:00.250Z WARNING [charge abc #2] two\\nlines {\"k\":1}");
    mt_buf_clear(&b);
}

static void test_logcap_file_sink_filters_level(void)
{
    char path[] = "/tmp/mt_logcap_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    mt_sink *s = NULL;
    mt_err err = {0};
    CHECK_OK(mt_sink_open(&s, path, false, MT_LOG_INFO, &err), &err);
    mt_sink_entry dbg = {.time = 1, .level = MT_LOG_DEBUG, .message = "hidden"};
    mt_sink_entry inf = {.time = 1, .level = MT_LOG_INFO, .message = "shown"};
    mt_sink_write(s, &dbg);
    mt_sink_write(s, &inf);
    mt_sink_close(s);
    FILE *f = fopen(path, "r");
    char line[256] = {0};
    CHECK(fgets(line, sizeof line, f) != NULL);
    CHECK(strstr(line, "shown") != NULL);
    CHECK(fgets(line, sizeof line, f) == NULL);
    fclose(f);
    unlink(path);
}

static void test_logcap_open_error_names_file(void)
{
    mt_sink *s = NULL;
    mt_err err = {0};
    CHECK_EQ(mt_sink_open(&s, "/nonexistent-dir/x.log", false, 0, &err), MT_EIO);
    CHECK(s == NULL);
    CHECK(strstr(mt_err_msg(&err), "/nonexistent-dir/x.log") != NULL);
    mt_err_clear(&err);
}

static void test_logcap_redact(void)
{
    mt_span secrets[] = {{"tok_secret", 10}, {"tok_secret_longer", 17}, {"", 0}};
    const char *text = "a tok_secret_longer b tok_secret c tok_secre";
    mt_buf b;
    mt_buf_init(&b, false);
    CHECK_OK(mt_redact(text, strlen(text), secrets, 3, &b), NULL);
    CHECK_STR_EQ((char *)b.data, "a [redacted] b [redacted] c tok_secre");
    mt_buf_clear(&b);
    mt_buf_init(&b, false);
    CHECK_OK(mt_redact("", 0, secrets, 3, &b), NULL);
    CHECK_EQ(b.len, 0);
    mt_buf_clear(&b);
}

int main(void)
{
    RUN(test_logcap_levels);
    RUN(test_logcap_format);
    RUN(test_logcap_file_sink_filters_level);
    RUN(test_logcap_open_error_names_file);
    RUN(test_logcap_redact);
    return 0;
}
