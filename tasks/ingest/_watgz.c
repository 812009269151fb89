/* The fast path through a gzipped WAT file: whole gzip members, each holding one regular WARC record.

Common Crawl writes every record as its own gzip member, and a WAT file's records are metadata records of
JSON (a warcinfo record first). Reader.scan(data, final) inflates the members at the start of `data` (each
whole, with libdeflate; its CRC and size checked), reads each one's record, and sorts it as extract.py's
_page_of does a metadata record: too large, no response, a response that is no HTML page, an HTML page
without img links, or a page to read (its payload is handed back, to be read by wat.py).

It reads only the regular record: a member that holds exactly one record of WARC/1.0 or 1.1, its header
lines plain ASCII `Name: value` without folding, its Content-Length and WARC-Type once each, its block
followed by CRLF CRLF at the member's end, of type metadata (application/json) or warcinfo
(application/warc-fields). At anything else (a member that does not inflate, bytes between members, a
record of another kind or form, one larger than the reader inflates whole) it stops, and hands the file over
at that member's start: container.py's stream (ISA-L, fastwarc) reads it from there, damage and all, and
hands back at the next regular member, which find(data, start, final) finds.

scan returns (used, stop, records, responses, html_pages, not_a_page, too_large, wat, pages):
- used: bytes of `data` read (whole members); stop: 1 when the member at `used` is handed over, 0 when
  `data` ended (without `final`, a member cut by the end of `data` may be whole with more of the file);
- records: the records read; responses, html_pages, not_a_page, too_large: what they count of the records
  not handed back as pages (as _page_of counts them); wat: whether a metadata record was among them;
- pages: (number of the record among those read, from 1; its payload) for each page to read, which its
  reader counts.
The GIL is released while members inflate: a Reader is for one thread at a time.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <sys/mman.h>

#include "libdeflate/libdeflate.h"

#define FIRST_OUT (1 << 20)     /* the output buffer's first size; doubled as a member needs it */
#define MAX_HEADER 16384        /* a regular record's header block at most */
#define MIN_MEMBER 18           /* a gzip header (10 bytes) and trailer (8) */

typedef struct {
    PyObject_HEAD
    struct libdeflate_decompressor *inflater;
    unsigned char *out;
    size_t out_size;
    size_t max_out;             /* a member that inflates to more is handed over */
    Py_ssize_t cap;             /* max_record_bytes: a larger payload is too large */
    Py_ssize_t max_values;      /* MAX_JSON_VALUES: a payload with more commas is too large */
    Py_buffer markers[3];       /* IMG_MARKER, RESPONSE_MARKER, HTML_MARKER */
    int busy;                   /* a scan or find under way (the GIL is released while members inflate) */
} Reader;

/* Whether the reader may inflate now: initialised, and not in use by another thread (it would reallocate the
   output buffer under it). Sets the error when not. */
static int begin(Reader *r) {
    if (r->inflater == NULL || r->out == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reader not initialised");
        return 0;
    }
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Reader in use by another thread");
        return 0;
    }
    r->busy = 1;
    return 1;
}

/* The output buffer: pages of its own, given back whole when the reader goes (a heap block of megabytes, freed
   for every file, grew the process's peak memory by tens of MB over a few hundred files: malloc's threshold for
   mapping a block moves up to the largest freed, and the blocks then come from the fragmented heap). */
static unsigned char *map(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

enum { IMG, RESPONSE, HTML };
enum { HANDED_OVER = -1, TOO_LARGE, NO_RESPONSE, NOT_HTML, NO_IMG, PAGE, WARCINFO };

static int has(const Reader *r, int which, const unsigned char *p, size_t n) {
    const Py_buffer *m = &r->markers[which];
    return memmem(p, n, m->buf, (size_t)m->len) != NULL;
}

static int lower_eq(const unsigned char *p, size_t n, const char *name) {
    size_t len = strlen(name);
    if (n != len)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        if (c != (unsigned char)name[i])
            return 0;
    }
    return 1;
}

/* One header line's value, if its name (ASCII case-insensitive) is `exact`'s: 1; -1 when the name is written
   otherwise than `exact` or was seen before (fastwarc's to judge); 0 when it is another name. */
static int take(const unsigned char *name, size_t name_len, const unsigned char *value, size_t value_len,
                const char *lower, const char *exact, const unsigned char **out, size_t *out_len) {
    if (!lower_eq(name, name_len, lower))
        return 0;
    if (memcmp(name, exact, name_len) != 0 || *out != NULL)
        return -1;
    *out = value;
    *out_len = value_len;
    return 1;
}

/* The record of one inflated member: its type (or HANDED_OVER) and its payload. */
static int read_record(const unsigned char *p, size_t n, const unsigned char **payload, size_t *payload_len) {
    if (n < 10 || (memcmp(p, "WARC/1.0\r\n", 10) != 0 && memcmp(p, "WARC/1.1\r\n", 10) != 0))
        return HANDED_OVER;
    const unsigned char *type = NULL, *length = NULL, *ctype = NULL;
    size_t type_len = 0, length_len = 0, ctype_len = 0;
    size_t at = 10, end = n < MAX_HEADER ? n : MAX_HEADER;
    for (;;) {
        size_t line = at;
        while (at < end && p[at] != '\r') {
            unsigned char c = p[at];
            if ((c < 0x20 && c != '\t') || c > 0x7e)
                return HANDED_OVER;    /* controls, a bare LF, non-ASCII: fastwarc's to judge */
            at++;
        }
        if (at + 1 >= end || p[at + 1] != '\n')
            return HANDED_OVER;
        size_t line_end = at;
        at += 2;
        if (line_end == line)
            break;                     /* the empty line: the block follows */
        if (p[line] == ' ' || p[line] == '\t')
            return HANDED_OVER;        /* a folded line */
        const unsigned char *colon = memchr(p + line, ':', line_end - line);
        if (colon == NULL || colon == p + line)
            return HANDED_OVER;
        size_t name_len = (size_t)(colon - (p + line));
        for (size_t i = 0; i < name_len; i++)
            if (p[line + i] == ' ' || p[line + i] == '\t')
                return HANDED_OVER;
        const unsigned char *value = colon + 1;
        while (value < p + line_end && (*value == ' ' || *value == '\t'))
            value++;
        size_t value_len = (size_t)(p + line_end - value);
        if (value_len && (value[value_len - 1] == ' ' || value[value_len - 1] == '\t'))
            return HANDED_OVER;
        const unsigned char *name = p + line;
        if (lower_eq(name, name_len, "content-encoding") || lower_eq(name, name_len, "transfer-encoding"))
            return HANDED_OVER;
        int found = take(name, name_len, value, value_len, "warc-type", "WARC-Type", &type, &type_len);
        if (!found)
            found = take(name, name_len, value, value_len, "content-length", "Content-Length", &length, &length_len);
        if (!found)
            found = take(name, name_len, value, value_len, "content-type", "Content-Type", &ctype, &ctype_len);
        if (found < 0)
            return HANDED_OVER;
    }
    if (type == NULL || length == NULL || ctype == NULL || length_len == 0 || length_len > 15)
        return HANDED_OVER;
    size_t content = 0;
    for (size_t i = 0; i < length_len; i++) {
        if (length[i] < '0' || length[i] > '9')
            return HANDED_OVER;
        content = content * 10 + (size_t)(length[i] - '0');
    }
    if (content > n || n - at < content || n - at - content != 4 || memcmp(p + at + content, "\r\n\r\n", 4) != 0)
        return HANDED_OVER;            /* the block and its CRLF CRLF fill the member exactly */
    *payload = p + at;
    *payload_len = content;
    if (type_len == 8 && memcmp(type, "metadata", 8) == 0 && ctype_len == 16 &&
        memcmp(ctype, "application/json", 16) == 0)
        return PAGE;                   /* sorted further by the caller */
    if (type_len == 8 && memcmp(type, "warcinfo", 8) == 0 && ctype_len == 23 &&
        memcmp(ctype, "application/warc-fields", 23) == 0)
        return WARCINFO;
    return HANDED_OVER;
}

/* A metadata record's payload, sorted as extract.py's _page_of does. */
static int sort_payload(const Reader *r, const unsigned char *p, size_t n) {
    if (n > (size_t)r->cap)
        return TOO_LARGE;
    if (n > (size_t)r->max_values) {
        size_t commas = 0;
        for (const unsigned char *c = p; (c = memchr(c, ',', (size_t)(p + n - c))) != NULL; c++)
            if (++commas > (size_t)r->max_values)
                return TOO_LARGE;
    }
    if (has(r, IMG, p, n))
        return PAGE;
    if (!has(r, RESPONSE, p, n))
        return NO_RESPONSE;
    return has(r, HTML, p, n) ? NO_IMG : NOT_HTML;
}

/* Inflate the member at `in` whole; its size in and out, or 0 when it is handed over, -1 when `in` may cut it. */
static int inflate_member(Reader *r, const unsigned char *in, size_t n, int final, size_t *used, size_t *made) {
    if (n < MIN_MEMBER)
        return final ? 0 : -1;
    if (in[0] != 0x1f || in[1] != 0x8b || in[2] != 8 || in[3] != 0)
        return 0;                      /* no gzip member, or one with optional header fields: not the regular form */
    for (;;) {
        enum libdeflate_result res =
            libdeflate_gzip_decompress_ex(r->inflater, in, n, r->out, r->out_size, used, made);
        if (res == LIBDEFLATE_SUCCESS)
            return 1;
        if (res == LIBDEFLATE_INSUFFICIENT_SPACE && r->out_size < r->max_out) {
            size_t size = r->out_size * 2 < r->max_out ? r->out_size * 2 : r->max_out;
            unsigned char *out = map(size);   /* nothing to copy: the member is inflated again */
            if (out == NULL)
                return 0;
            munmap(r->out, r->out_size);
            r->out = out;
            r->out_size = size;
            continue;
        }
        /* damaged, or cut by the end of `in`: with more of the file to come, a member as large as the reader
           takes may still be whole */
        return (res == LIBDEFLATE_BAD_DATA && !final && n < r->max_out + (r->max_out >> 4) + 1024) ? -1 : 0;
    }
}

static PyObject *Reader_scan(Reader *r, PyObject *args) {
    Py_buffer data;
    int final;
    if (!PyArg_ParseTuple(args, "y*p", &data, &final))
        return NULL;
    if (!begin(r)) {
        PyBuffer_Release(&data);
        return NULL;
    }
    const unsigned char *in = data.buf;
    size_t n = (size_t)data.len, at = 0;
    long long counts[WARCINFO + 1] = {0};
    long long records = 0;
    int stop = 0, wat = 0;
    PyObject *pages = PyList_New(0);
    if (pages == NULL)
        goto fail;
    while (at < n) {
        size_t used = 0, made = 0;
        int whole;
        Py_BEGIN_ALLOW_THREADS
        whole = inflate_member(r, in + at, n - at, final, &used, &made);
        Py_END_ALLOW_THREADS
        if (whole < 0)
            break;
        const unsigned char *payload = NULL;
        size_t payload_len = 0;
        int kind = whole ? read_record(r->out, made, &payload, &payload_len) : HANDED_OVER;
        if (kind == HANDED_OVER) {
            stop = 1;
            break;
        }
        at += used;
        records++;
        if (kind == PAGE) {
            wat = 1;
            kind = sort_payload(r, payload, payload_len);
        }
        counts[kind]++;
        if (kind == PAGE) {
            PyObject *page = Py_BuildValue("(Ly#)", records, payload, (Py_ssize_t)payload_len);
            if (page == NULL || PyList_Append(pages, page) < 0) {
                Py_XDECREF(page);
                goto fail;
            }
            Py_DECREF(page);
        }
    }
    r->busy = 0;
    PyBuffer_Release(&data);
    return Py_BuildValue("(niLLLLLON)", (Py_ssize_t)at, stop, records, counts[NO_IMG] + counts[NOT_HTML],
                         counts[NO_IMG], counts[NOT_HTML] + counts[NO_RESPONSE] + counts[WARCINFO],
                         counts[TOO_LARGE], wat ? Py_True : Py_False, pages);
fail:
    r->busy = 0;
    Py_XDECREF(pages);
    PyBuffer_Release(&data);
    return NULL;
}

/* find(data, start, final) -> (at, end, resume): the first regular member at or after `start` in `data` (its
   offset and where it ends), or at = -1 when there is none in `data`; resume: where a later call, given more of
   the file, looks on (the first member that may be cut by the end of `data` is looked at again). A regular
   member found inside a larger one that is cut is harmless: the container's stream takes over there only where
   it reads a record at a member's start. */
static PyObject *Reader_find(Reader *r, PyObject *args) {
    Py_buffer data;
    Py_ssize_t start;
    int final;
    if (!PyArg_ParseTuple(args, "y*np", &data, &start, &final))
        return NULL;
    if (!begin(r)) {
        PyBuffer_Release(&data);
        return NULL;
    }
    const unsigned char *in = data.buf;
    size_t n = (size_t)data.len, at = start < 0 ? 0 : (size_t)start;
    Py_ssize_t found = -1, end = -1, resume = -1;
    Py_BEGIN_ALLOW_THREADS
    while (at < n) {
        const unsigned char *magic = memmem(in + at, n - at, "\x1f\x8b\x08\x00", 4);
        if (magic == NULL)
            break;
        at = (size_t)(magic - in);
        size_t used = 0, made = 0;
        const unsigned char *payload;
        size_t payload_len;
        int whole = inflate_member(r, in + at, n - at, final, &used, &made);
        if (whole < 0 && resume < 0)
            resume = (Py_ssize_t)at;   /* may be whole with more of the file: looked at again then; on past it */
        if (whole > 0 && read_record(r->out, made, &payload, &payload_len) != HANDED_OVER) {
            found = (Py_ssize_t)at;
            end = (Py_ssize_t)(at + used);
            break;
        }
        at += whole > 0 ? used : 1;    /* past a whole member of another form: no member begins inside it */
    }
    Py_END_ALLOW_THREADS
    if (found < 0 && resume < 0)
        resume = n > 3 && (size_t)start < n - 3 ? (Py_ssize_t)(n - 3) : start;   /* a magic cut by the end */
    r->busy = 0;
    PyBuffer_Release(&data);
    return Py_BuildValue("(nnn)", found, end, resume);
}

static int Reader_init(Reader *r, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"cap", "max_values", "img", "response", "html", NULL};
    Py_buffer markers[3];
    Py_ssize_t cap, max_values;
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Reader in use by another thread");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "nny*y*y*", names, &cap, &max_values, &markers[0], &markers[1],
                                     &markers[2]))
        return -1;
    if (cap < 0 || max_values < 0 || cap > PY_SSIZE_T_MAX / 2) {
        for (int i = 0; i < 3; i++)
            PyBuffer_Release(&markers[i]);
        PyErr_SetString(PyExc_ValueError, "cap and max_values must not be negative");
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        if (r->markers[i].obj != NULL)
            PyBuffer_Release(&r->markers[i]);
        r->markers[i] = markers[i];
    }
    r->cap = cap;
    r->max_values = max_values;
    /* the largest record whose payload is within the cap; a member larger than FIRST_OUT only as it needs */
    r->max_out = (size_t)r->cap + MAX_HEADER + 4;
    if (r->max_out < FIRST_OUT)
        r->max_out = FIRST_OUT;
    if (r->inflater == NULL && (r->inflater = libdeflate_alloc_decompressor()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (r->out == NULL) {
        if ((r->out = map(FIRST_OUT)) == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        r->out_size = FIRST_OUT;
    }
    return 0;
}

static void Reader_dealloc(Reader *r) {
    if (r->inflater != NULL)
        libdeflate_free_decompressor(r->inflater);
    if (r->out != NULL)
        munmap(r->out, r->out_size);
    for (int i = 0; i < 3; i++)
        if (r->markers[i].obj != NULL)
            PyBuffer_Release(&r->markers[i]);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMethodDef Reader_methods[] = {
    {"scan", (PyCFunction)Reader_scan, METH_VARARGS,
     "scan(data, final) -> (used, stop, records, responses, html_pages, not_a_page, too_large, wat, pages)"},
    {"find", (PyCFunction)Reader_find, METH_VARARGS, "find(data, start, final) -> (at, end, resume)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Reader_members[] = {
    {"max_out", T_PYSSIZET, offsetof(Reader, max_out), READONLY, "the largest member inflated whole"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "clipcrawl.tasks.ingest._watgz.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(cap, max_values, img, response, html): the regular members of a gzipped WAT file",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
    .tp_members = Reader_members,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_watgz", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__watgz(void) {
    if (PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
