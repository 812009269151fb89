/* A page's raw img links -> pairs: the per-link loop of extract._PairBuilder.add, in C.

   add(links, escaped, base, withheld, seen, uids, urls, texts, dropped, config) -> (with_alt, kept)

   For each (src, alt) of `links`, in order, the same steps and drop reasons as normalize.py's functions:
   no alt; the alt's character references decoded (HTML attribute rules) and its whitespace collapsed; its
   length; the src's references decoded; the src kept as it is when it is already a plain absolute http(s) URL,
   else resolved against the page's base; the page's opt-out (`withheld`, a PairStatus value or None); the
   pair's uid (XXH3-64 of url "\n" text) seen before in the file. The common cases run here; the rare ones call
   the Python functions they belong to (`config` holds them): unescape_attribute for a value with '&',
   normalize_text for an alt that is not already normalised, resolve_url(src, base) for a src that is neither a
   plain URL, nor another scheme, nor a relative form _Base.join joins itself ("/x", "//host/x", "x/y": no dot
   segments, query or fragment at either end) that gives a plain URL; `base()` gives the page's
   normalize._Base, asked for once, at the first relative src. Kept pairs are appended to uids/urls/texts and
   their uids added to `seen`; dropped ones are counted in `dropped` ({PairStatus value: n}, FileStats.dropped).
   tests/test_pairs.py runs the Python loop beside it.

   config: (min_len, max_len, unescape_attribute, normalize_text, resolve_url, xxh3_64_intdigest,
            "no_alt", "alt_too_short", "alt_too_long", "duplicate", "unsupported_scheme") */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { MIN_LEN, MAX_LEN, UNESCAPE, NORMALIZE, RESOLVE, XXH3, NO_ALT, TOO_SHORT, TOO_LONG, DUPLICATE, UNSUPPORTED, CONFIG_SIZE };

/* One call's state: its arguments, and the page's base (scheme, origin, directory), asked for once. */
typedef struct {
    int escaped;
    PyObject *base, *withheld, *seen, *uids, *urls, *texts, *dropped;
    PyObject *const *cfg;
    Py_ssize_t min_len, max_len;
    PyObject *page_base; /* the page's normalize._Base, or NULL before it is asked for */
} Ctx;

static int drop(PyObject *dropped, PyObject *key) {
    PyObject *n = PyDict_GetItemWithError(dropped, key);
    if (n == NULL && PyErr_Occurred()) return -1;
    PyObject *more = PyLong_FromLong(n == NULL ? 1 : PyLong_AsLong(n) + 1);
    if (more == NULL) return -1;
    int err = PyDict_SetItem(dropped, key, more);
    Py_DECREF(more);
    return err;
}

static int has_amp(PyObject *s) {
    return PyUnicode_FindChar(s, '&', 0, PyUnicode_GET_LENGTH(s), 1) >= 0;
}

/* Whether every character is printable (str.isprintable). */
static int printable(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (PyUnicode_IS_ASCII(s)) {
        const unsigned char *p = PyUnicode_1BYTE_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++)
            if (p[i] < 0x20 || p[i] == 0x7F) return 0;
        return 1;
    }
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!Py_UNICODE_ISPRINTABLE(PyUnicode_READ(kind, data, i))) return 0;
    return 1;
}

/* normalize_text's test: printable, no double space, no space at either end: the text as it is. */
static int normalised(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n == 0) return 1;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (PyUnicode_READ(kind, data, 0) == ' ' || PyUnicode_READ(kind, data, n - 1) == ' ') return 0;
    Py_UCS4 prev = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == ' ' ? prev == ' ' : !(c < 0x80 ? c >= 0x20 && c != 0x7F : Py_UNICODE_ISPRINTABLE(c))) return 0;
        prev = c;
    }
    return 1;
}

static int host_char(Py_UCS4 c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
}

/* normalize._PLAIN_HTTP: https?://[A-Za-z0-9.-]+(:[0-9]{1,5})? then [/?#] or the end. */
static int plain_http_prefix(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), i;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
#define AT(k) ((k) < n ? PyUnicode_READ(kind, data, (k)) : 0)
    if (AT(0) != 'h' || AT(1) != 't' || AT(2) != 't' || AT(3) != 'p') return 0;
    i = AT(4) == 's' ? 5 : 4;
    if (AT(i) != ':' || AT(i + 1) != '/' || AT(i + 2) != '/') return 0;
    i += 3;
    Py_ssize_t host = i;
    while (i < n && host_char(AT(i))) i++;
    if (i == host) return 0;
    if (i < n && AT(i) == ':') {
        Py_ssize_t digits = ++i;
        while (i < n && AT(i) >= '0' && AT(i) <= '9') i++;
        if (i == digits || i - digits > 5) return 0;
    }
#undef AT
    return i == n || PyUnicode_READ(kind, data, i) == '/' || PyUnicode_READ(kind, data, i) == '?' ||
           PyUnicode_READ(kind, data, i) == '#';
}

/* normalize.plain_http_url: _PLAIN_HTTP, not ending in a space, printable. */
static int plain_http(PyObject *s) {
    return plain_http_prefix(s) && PyUnicode_READ(PyUnicode_KIND(s), PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s) - 1) != ' ' &&
           printable(s);
}

/* XXH3-64 of the UTF-8 (surrogatepass) of url "\n" text, by the xxhash module's function. */
static PyObject *uid_of(PyObject *url, PyObject *text, PyObject *xxh3) {
    PyObject *bytes;
    if (PyUnicode_IS_ASCII(url) && PyUnicode_IS_ASCII(text)) {
        Py_ssize_t a = PyUnicode_GET_LENGTH(url), b = PyUnicode_GET_LENGTH(text);
        bytes = PyBytes_FromStringAndSize(NULL, a + 1 + b);
        if (bytes == NULL) return NULL;
        char *o = PyBytes_AS_STRING(bytes);
        memcpy(o, PyUnicode_1BYTE_DATA(url), a);
        o[a] = '\n';
        memcpy(o + a + 1, PyUnicode_1BYTE_DATA(text), b);
    } else {
        PyObject *joined = PyUnicode_FromFormat("%U\n%U", url, text);
        if (joined == NULL) return NULL;
        bytes = PyUnicode_AsEncodedString(joined, "utf-8", "surrogatepass");
        Py_DECREF(joined);
        if (bytes == NULL) return NULL;
    }
    PyObject *uid = PyObject_CallOneArg(xxh3, bytes);
    Py_DECREF(bytes);
    return uid;
}

static int ascii_ws(Py_UCS4 c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

static int scheme_char(Py_UCS4 c) { return host_char(c) || c == '+'; }

/* The page's normalize._Base (borrowed), asked of `base()` once, at the first src that needs it; NULL on error. */
static PyObject *page_base(Ctx *c) {
    if (c->page_base == NULL) c->page_base = PyObject_CallNoArgs(c->base);
    return c->page_base;
}

/* normalize.resolve_url for the common relative srcs, against the page's _Base: 1 and *url set; 0 dropped (counted
   in *why); 2: not one of them, for resolve_url itself. The forms and tests are _Base.join's. */
static int resolve_common(Ctx *c, PyObject *src, PyObject **url, PyObject **why) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(src);
    int kind = PyUnicode_KIND(src);
    const void *data = PyUnicode_DATA(src);
#define AT(k) ((k) < n ? PyUnicode_READ(kind, data, (k)) : 0)
    if (n == 0 || ascii_ws(AT(0)) || ascii_ws(AT(n - 1))) return 2; /* stripped, or empty: resolve_url */
    if (PyUnicode_FindChar(src, '\t', 0, n, 1) >= 0 || PyUnicode_FindChar(src, '\n', 0, n, 1) >= 0 ||
        PyUnicode_FindChar(src, '\r', 0, n, 1) >= 0)
        return 2;
    Py_ssize_t i = 0;
    if ((AT(0) | 0x20) >= 'a' && (AT(0) | 0x20) <= 'z') { /* a scheme? [A-Za-z][A-Za-z0-9+.-]*: */
        while (i < n && scheme_char(AT(i))) i++;
        if (AT(i) == ':') {
            int http = (i == 4 || (i == 5 && (AT(4) | 0x20) == 's')) && (AT(0) | 0x20) == 'h' &&
                       (AT(1) | 0x20) == 't' && (AT(2) | 0x20) == 't' && (AT(3) | 0x20) == 'p';
            if (http) return 2;
            *why = c->cfg[UNSUPPORTED];
            return 0;
        }
    }
    Py_UCS4 first = AT(0), last = AT(n - 1);
    if (first == '?' || first == '#' || first == '.' || last == '?' || last == '#' || last == '.') return 2;
    for (Py_ssize_t k = 0; k + 1 < n; k++)
        if (AT(k) == '/' && AT(k + 1) == '.') return 2;
    if (page_base(c) == NULL) return -1;
    PyObject *origin = PyObject_GetAttrString(c->page_base, "origin");
    if (origin == NULL) return -1;
    PyObject *joined = NULL;
    if (origin == Py_None) {
        Py_DECREF(origin);
        return 2;
    }
    if (first == '/') {
        if (AT(1) == '/') {
            PyObject *scheme = PyObject_GetAttrString(c->page_base, "scheme");
            joined = scheme == NULL ? NULL : PyUnicode_FromFormat("%U:%U", scheme, src);
            Py_XDECREF(scheme);
        } else {
            joined = PyUnicode_Concat(origin, src);
        }
    } else {
        for (Py_ssize_t k = 0; k < n && AT(k) != '/'; k++)
            if (AT(k) == ':') {
                Py_DECREF(origin);
                return 2;
            }
        PyObject *directory = PyObject_GetAttrString(c->page_base, "directory");
        joined = directory == NULL ? NULL : PyUnicode_Concat(directory, src);
        Py_XDECREF(directory);
    }
#undef AT
    Py_DECREF(origin);
    if (joined == NULL) return -1;
    if (!plain_http_prefix(joined)) { /* resolve_url's _PLAIN_HTTP test on the result; urlsplit's otherwise */
        Py_DECREF(joined);
        return 2;
    }
    *url = joined;
    return 1;
}

/* A WAT value (written as in the page) with its character references decoded, in place; -1 on error. */
static int unescape(Ctx *c, PyObject **value) {
    if (!c->escaped || !has_amp(*value)) return 0;
    Py_SETREF(*value, PyObject_CallOneArg(c->cfg[UNESCAPE], *value));
    if (*value == NULL) return -1;
    if (!PyUnicode_Check(*value)) {
        PyErr_SetString(PyExc_TypeError, "unescape_attribute must return str");
        return -1;
    }
    return 0;
}

/* One link: 1 kept, 0 dropped (counted), -1 error. Takes no reference of src or alt. */
static int add_one(Ctx *c, PyObject *src, PyObject *alt) {
    PyObject *const *cfg = c->cfg;
    PyObject *text = NULL, *url = NULL, *uid = NULL;
    int result = -1;
    Py_INCREF(alt);
    Py_INCREF(src);
    if (unescape(c, &alt)) goto done;
    text = normalised(alt) ? Py_NewRef(alt) : PyObject_CallOneArg(cfg[NORMALIZE], alt);
    if (text == NULL) goto done;
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "normalize_text must return str");
        goto done;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (n < c->min_len || n > c->max_len) {
        result = drop(c->dropped, cfg[n < c->min_len ? TOO_SHORT : TOO_LONG]) ? -1 : 0;
        goto done;
    }
    if (unescape(c, &src)) goto done;
    if (plain_http(src)) {
        url = Py_NewRef(src);
    } else {
        PyObject *why = NULL;
        int r = resolve_common(c, src, &url, &why);
        if (r < 0) goto done;
        if (r == 0) {
            result = drop(c->dropped, why) ? -1 : 0;
            goto done;
        }
        if (r == 2) {
            PyObject *base = page_base(c);
            PyObject *resolved = base == NULL ? NULL : PyObject_CallFunctionObjArgs(cfg[RESOLVE], src, base, NULL);
            if (resolved == NULL) goto done;
            if (!PyTuple_Check(resolved) || PyTuple_GET_SIZE(resolved) != 2) {
                Py_DECREF(resolved);
                PyErr_SetString(PyExc_TypeError, "resolve_url() must return (url or None, status)");
                goto done;
            }
            url = Py_NewRef(PyTuple_GET_ITEM(resolved, 0));
            if (url != Py_None && !PyUnicode_Check(url)) {
                Py_DECREF(resolved);
                PyErr_SetString(PyExc_TypeError, "resolve_url() must return (url or None, status)");
                goto done;
            }
            if (url == Py_None) {
                why = PyObject_GetAttrString(PyTuple_GET_ITEM(resolved, 1), "value");
                Py_DECREF(resolved);
                if (why == NULL) goto done;
                result = drop(c->dropped, why) ? -1 : 0;
                Py_DECREF(why);
                goto done;
            }
            Py_DECREF(resolved);
        }
    }
    if (c->withheld != Py_None) {
        result = drop(c->dropped, c->withheld) ? -1 : 0;
        goto done;
    }
    uid = uid_of(url, text, cfg[XXH3]);
    if (uid == NULL) goto done;
    int found = PySet_Contains(c->seen, uid);
    if (found < 0) goto done;
    if (found) {
        result = drop(c->dropped, cfg[DUPLICATE]) ? -1 : 0;
        goto done;
    }
    if (PySet_Add(c->seen, uid) || PyList_Append(c->uids, uid) || PyList_Append(c->urls, url) ||
        PyList_Append(c->texts, text))
        goto done;
    result = 1;
done:
    Py_XDECREF(alt);
    Py_XDECREF(src);
    Py_XDECREF(text);
    Py_XDECREF(url);
    Py_XDECREF(uid);
    return result;
}

static PyObject *add(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10 || !PyList_Check(args[0]) || !PySet_Check(args[4]) || !PyList_Check(args[5]) ||
        !PyList_Check(args[6]) || !PyList_Check(args[7]) || !PyDict_Check(args[8]) || !PyTuple_Check(args[9]) ||
        PyTuple_GET_SIZE(args[9]) != CONFIG_SIZE) {
        PyErr_SetString(PyExc_TypeError,
                        "add(links: list, escaped, base, withheld, seen: set, uids: list, urls: list, texts: list, "
                        "dropped: dict, config: tuple)");
        return NULL;
    }
    Ctx c = {0};
    c.escaped = PyObject_IsTrue(args[1]);
    if (c.escaped < 0) return NULL;
    c.base = args[2], c.withheld = args[3], c.seen = args[4], c.uids = args[5];
    c.urls = args[6], c.texts = args[7], c.dropped = args[8], c.cfg = &PyTuple_GET_ITEM(args[9], 0);
    c.min_len = PyLong_AsSsize_t(c.cfg[MIN_LEN]), c.max_len = PyLong_AsSsize_t(c.cfg[MAX_LEN]);
    if (PyErr_Occurred()) return NULL;
    PyObject *links = args[0], *result = NULL;
    Py_ssize_t with_alt = 0, kept = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(links); i++) {
        PyObject *link = PyList_GET_ITEM(links, i);
        if (!PyTuple_Check(link) || PyTuple_GET_SIZE(link) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(link, 0)) ||
            (PyTuple_GET_ITEM(link, 1) != Py_None && !PyUnicode_Check(PyTuple_GET_ITEM(link, 1)))) {
            PyErr_Format(PyExc_TypeError, "link %zd is not (str, str or None)", i);
            goto done;
        }
        PyObject *src = PyTuple_GET_ITEM(link, 0), *alt = PyTuple_GET_ITEM(link, 1);
        if (alt == Py_None) {
            if (drop(c.dropped, c.cfg[NO_ALT])) goto done;
            continue;
        }
        with_alt++;
        int r = add_one(&c, src, alt);
        if (r < 0) goto done;
        kept += r;
    }
    result = Py_BuildValue("(nn)", with_alt, kept);
done:
    Py_XDECREF(c.page_base);
    return result;
}

static PyMethodDef methods[] = {
    {"add", (PyCFunction)(void (*)(void))add, METH_FASTCALL,
     "add(links, escaped, base, withheld, seen, uids, urls, texts, dropped, config) -> (with_alt, kept)"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pairs", "a page's img links to pairs", -1, methods};

PyMODINIT_FUNC PyInit__pairs(void) { return PyModule_Create(&module); }
