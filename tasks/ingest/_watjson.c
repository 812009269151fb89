/* The img links of a WAT record's JSON, for the regular record: wat.py's fast path.

   page(payload, meta_names, header_names, is_license_rel) reads the JSON once, strictly (RFC 8259: any syntax
   error, control character in a string, lone surrogate escape or nesting deeper than MAX_DEPTH), builds Python
   objects only for the few values extraction reads (the page's URL, its <base href>, its HTTP status, each img
   link's url and alt, and on a page that mentions creativecommons.org its license candidates) and skips the rest,
   the <a> links above all, without building anything. It returns
   - (page_url, base, status, [(url, alt or None), ...], license_links, metas_raw, headers_raw) for an HTML
     response, as wat.page_links_msgspec reads them; metas_raw and headers_raw are the raw JSON (bytes) of
     Head.Metas and the response's Headers when they mention one of the names asked for (None otherwise), which
     wat.py then reads as it reads msgspec's raw values;
   - None for a record that describes no HTML response;
   - False for any record it does not read the way msgspec does, which wat.py then reads with msgspec: invalid
     or unexpected JSON (msgspec says why), a key of interest written twice or with escapes, a null where an
     object is expected, a status that is no plain integer, a number msgspec might not decode, a string msgspec
     decodes that is not UTF-8, a license candidate of odd shape.
   Strings msgspec decodes (typed fields and `Any` values: every link's path, url, alt and rel, the response
   message, the base) are checked to be UTF-8 as it checks them; those it skips are not, as it does not.
   So it never answers otherwise than msgspec's path would: tests/test_watjson.py compares the two on the
   world's records, on odd ones and on many mutations of both. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_DEPTH 64
#define BAIL (-1)

typedef struct {
    const char *p, *end;
    int depth;
    int validate; /* strings are checked to be UTF-8: in the values msgspec decodes (it raises on others) */
    char *scratch; /* a decoded string with escapes */
    size_t scratch_cap;
} Scan;

typedef struct {
    const char *start; /* the characters between the quotes */
    size_t len;
    int escaped;
} Str;

static const char *const IMG_PATH = "IMG@/src";
static const char *const A_PATH = "A@/href";
static const char LICENSE_MARKER[] = "creativecommons.org";

static inline void skip_ws(Scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t')) s->p++;
}

static inline int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return BAIL;
    }
    *out = v;
    return 0;
}

/* The length of the UTF-8 sequence at p (Unicode's well-formed sequences, as Python's strict decoder), or 0. */
static int utf8_length(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (c < 0xC2 || c > 0xF4 || end - p < n) return 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
    else if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
    if (p[1] < lo || p[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return n;
}

/* At the opening quote: the string's span; escapes checked (a surrogate only as a high-low pair), and UTF-8
   when the scan validates. */
/* The first byte from p on that is a quote, a backslash or a control character, or (`high`) any byte >= 0x80;
   16 bytes at a time where SSE2 is (every x86-64): most of a WAT record's bytes are inside strings. */
static inline const char *string_stop(const char *p, const char *end, int high) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), control = _mm_set1_epi8(0x1F);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        __m128i stop = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
        stop = _mm_or_si128(stop, _mm_cmpeq_epi8(_mm_max_epu8(v, control), control)); /* v <= 0x1F */
        int mask = _mm_movemask_epi8(stop) | (high ? _mm_movemask_epi8(v) : 0);
        if (mask) return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (p < end && (unsigned char)*p >= 0x20 && *p != '"' && *p != '\\' && !(high && (unsigned char)*p >= 0x80)) p++;
    return p;
}

static int scan_string(Scan *s, Str *out) {
    const char *p = s->p + 1, *end = s->end;
    out->start = p, out->escaped = 0;
    for (;;) {
        p = string_stop(p, end, s->validate);
        if (s->validate && p < end && (unsigned char)*p >= 0x80) {
            int n = utf8_length((const unsigned char *)p, (const unsigned char *)end);
            if (n == 0) return BAIL;
            p += n;
            continue;
        }
        if (p >= end || (unsigned char)*p < 0x20) return BAIL;
        if (*p == '"') break;
        out->escaped = 1;
        if (p + 1 >= end) return BAIL;
        char e = p[1];
        if (e == 'u') {
            unsigned u;
            if (end - p < 6 || hex4(p + 2, &u)) return BAIL;
            p += 6;
            if (u >= 0xDC00 && u <= 0xDFFF) return BAIL;
            if (u >= 0xD800 && u <= 0xDBFF) {
                unsigned low;
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &low) || low < 0xDC00 || low > 0xDFFF)
                    return BAIL;
                p += 6;
            }
        } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
            p += 2;
        } else {
            return BAIL;
        }
    }
    out->len = (size_t)(p - out->start);
    s->p = p + 1;
    return 0;
}

static int utf8_put(char *o, unsigned u) {
    if (u < 0x80) return o[0] = (char)u, 1;
    if (u < 0x800) return o[0] = (char)(0xC0 | u >> 6), o[1] = (char)(0x80 | (u & 0x3F)), 2;
    if (u < 0x10000)
        return o[0] = (char)(0xE0 | u >> 12), o[1] = (char)(0x80 | ((u >> 6) & 0x3F)), o[2] = (char)(0x80 | (u & 0x3F)), 3;
    o[0] = (char)(0xF0 | u >> 18), o[1] = (char)(0x80 | ((u >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((u >> 6) & 0x3F)), o[3] = (char)(0x80 | (u & 0x3F));
    return 4;
}

/* The string's UTF-8 bytes, escapes decoded (into the scratch buffer when there are any); NULL: out of memory. */
static const char *unescaped(Scan *s, const Str *str, size_t *len) {
    if (!str->escaped) {
        *len = str->len;
        return str->start;
    }
    if (str->len > s->scratch_cap) {
        char *b = PyMem_Realloc(s->scratch, str->len);
        if (b == NULL) return NULL;
        s->scratch = b, s->scratch_cap = str->len;
    }
    const char *p = str->start, *end = str->start + str->len;
    char *o = s->scratch;
    while (p < end) {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        char e = p[1];
        unsigned u = 0;
        switch (e) {
        case 'b': *o++ = '\b'; p += 2; break;
        case 'f': *o++ = '\f'; p += 2; break;
        case 'n': *o++ = '\n'; p += 2; break;
        case 'r': *o++ = '\r'; p += 2; break;
        case 't': *o++ = '\t'; p += 2; break;
        case 'u':
            hex4(p + 2, &u); /* checked by scan_string, as the pair */
            p += 6;
            if (u >= 0xD800 && u <= 0xDBFF) {
                unsigned low = 0xDC00;
                hex4(p + 2, &low);
                p += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00);
            }
            o += utf8_put(o, u); /* never longer than its escape */
            break;
        default: *o++ = e; p += 2; /* " \ / */
        }
    }
    *len = (size_t)(o - s->scratch);
    return s->scratch;
}

/* A Python str of the string; NULL with no error set: not UTF-8 (msgspec raises, wat.py says why). */
static PyObject *to_str(Scan *s, const Str *str) {
    size_t len;
    const char *b = unescaped(s, str, &len);
    if (b == NULL) return NULL;
    PyObject *out = PyUnicode_DecodeUTF8(b, (Py_ssize_t)len, NULL);
    if (out == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
    return out;
}

/* A number, by JSON's grammar. One msgspec decodes (`validate`) is left to it unless it is a plain one: an
   exponent or hundreds of digits may overflow a float or pass Python's limit on an int's digits, where msgspec
   raises. */
static int skip_number(Scan *s) {
    const char *p = s->p, *end = s->end;
    if (p < end && *p == '-') p++;
    if (p >= end) return BAIL;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9')
        while (p < end && *p >= '0' && *p <= '9') p++;
    else return BAIL;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return BAIL;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return BAIL;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (s->validate) return BAIL;
    }
    if (s->validate && p - s->p > 300) return BAIL;
    s->p = p;
    return 0;
}

static int skip_value(Scan *s);

static int literal(Scan *s, const char *word, size_t n) {
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return BAIL;
    s->p += n;
    return 0;
}

/* At an object's or array's opening character: 1 when it closes right away, 0 when items follow, BAIL. */
static int open_container(Scan *s, char open, char close) {
    if (s->p >= s->end || *s->p != open || ++s->depth > MAX_DEPTH) return BAIL;
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++, s->depth--;
        return 1;
    }
    return 0;
}

/* After an item: 1 at a comma (another follows), 0 at the closing character (the container ends), BAIL. */
static int next_item(Scan *s, char close) {
    skip_ws(s);
    if (s->p >= s->end) return BAIL;
    if (*s->p == ',') {
        s->p++;
        skip_ws(s);
        return 1;
    }
    if (*s->p != close) return BAIL;
    s->p++, s->depth--;
    return 0;
}

/* Object members: calls `member` for each key, at its value (NULL: skips the values). */
typedef int (*Member)(Scan *s, const Str *key, void *state);

static int object(Scan *s, Member member, void *state) {
    int opened = open_container(s, '{', '}');
    if (opened != 0) return opened < 0 ? BAIL : 0;
    int more = 1;
    while (more > 0) {
        Str key;
        if (s->p >= s->end || *s->p != '"' || scan_string(s, &key)) return BAIL;
        skip_ws(s);
        if (s->p >= s->end || *s->p != ':') return BAIL;
        s->p++;
        skip_ws(s);
        if ((member ? member(s, &key, state) : skip_value(s))) return BAIL;
        more = next_item(s, '}');
    }
    return more;
}

/* Array elements: calls `element` at each (NULL: skips them). */
typedef int (*Element)(Scan *s, void *state);

static int array(Scan *s, Element element, void *state) {
    int opened = open_container(s, '[', ']');
    if (opened != 0) return opened < 0 ? BAIL : 0;
    int more = 1;
    while (more > 0) {
        if ((element ? element(s, state) : skip_value(s))) return BAIL;
        more = next_item(s, ']');
    }
    return more;
}

static int skip_value(Scan *s) {
    if (s->p >= s->end) return BAIL;
    Str ignored;
    switch (*s->p) {
    case '{': return object(s, NULL, NULL);
    case '[': return array(s, NULL, NULL);
    case '"': return scan_string(s, &ignored);
    case 't': return literal(s, "true", 4);
    case 'f': return literal(s, "false", 5);
    case 'n': return literal(s, "null", 4);
    default: return skip_number(s);
    }
}

/* A key equal to `name` (a key with escapes is never taken for one: the record goes to msgspec). */
static int key_is(const Str *key, const char *name, size_t n, int *seen, int bit) {
    if (key->len != n || memcmp(key->start, name, n) != 0) {
        if (key->escaped) *seen |= 1 << 30; /* maybe one of ours, written with escapes */
        return 0;
    }
    if (*seen & (1 << bit)) *seen |= 1 << 30; /* twice: msgspec takes the last */
    *seen |= 1 << bit;
    return 1;
}
#define KEY(name, bit) key_is(key, name, sizeof(name) - 1, &st->seen, bit)
#define TWICE(st) ((st)->seen & (1 << 30))

typedef struct {
    Str url, rel;
    int rel_kind;
} Anchor; /* an <a href> that may be a license link */

typedef struct {
    const char *metas, *metas_end, *headers, *headers_end, *head_links, *head_links_end;
    PyObject *page_url, *base, *links;
    long status; /* -1: none */
    int has_http, has_html;
    int marker; /* the payload mentions creativecommons.org: its license links are looked for */
    Anchor *anchors;
    size_t n_anchors, anchors_cap;
} Page;

typedef struct {
    int seen;
    Str path, url, alt, rel;
    int path_kind, url_kind, alt_kind, rel_kind; /* 0 missing, 1 string, 2 null, 3 other */
} Link;

static int value_kind(Scan *s, Str *str) {
    if (s->p < s->end && *s->p == '"') return scan_string(s, str) ? -1 : 1;
    if (s->p < s->end && *s->p == 'n') return literal(s, "null", 4) ? -1 : 2;
    return skip_value(s) ? -1 : 3;
}

/* A value msgspec decodes (a field typed Any): its strings must be UTF-8. */
static int skip_decoded(Scan *s) {
    int was = s->validate;
    s->validate = 1;
    int err = skip_value(s);
    s->validate = was;
    return err;
}

static int link_member(Scan *s, const Str *key, void *state) {
    Link *st = state;
    int *kind = NULL;
    Str *str = NULL;
    if (KEY("path", 0)) kind = &st->path_kind, str = &st->path;
    else if (KEY("url", 1)) kind = &st->url_kind, str = &st->url;
    else if (KEY("alt", 2)) kind = &st->alt_kind, str = &st->alt;
    else if (KEY("rel", 3)) kind = &st->rel_kind, str = &st->rel;
    if (kind == NULL) return skip_value(s);
    int was = s->validate;
    s->validate = 1;
    *kind = value_kind(s, str);
    s->validate = was;
    return *kind < 0 ? BAIL : 0;
}

/* 1 when the link's path is `name`, 0 when not, -1 out of memory (the record goes to msgspec). */
static int is_path(Scan *s, const Link *link, const char *name) {
    size_t n;
    const char *path = unescaped(s, &link->path, &n);
    if (path == NULL) return -1;
    return n == strlen(name) && memcmp(path, name, n) == 0;
}

static int link_element(Scan *s, void *state) {
    Page *page = state;
    Link link = {0};
    if (object(s, link_member, &link) || TWICE(&link)) return BAIL;
    if (link.path_kind != 1) return 0;
    if (link.url_kind == 0) link.url = (Str){"", 0, 0}; /* msgspec's default: "" */
    int anchor = page->marker && link.url_kind <= 1 ? is_path(s, &link, A_PATH) : 0;
    if (anchor < 0) return BAIL;
    if (anchor) {
        if (link.rel_kind == 3) return BAIL; /* a rel that is no string: msgspec's path keeps it as decoded */
        if (page->n_anchors == page->anchors_cap) {
            size_t cap = page->anchors_cap ? 2 * page->anchors_cap : 64;
            Anchor *a = PyMem_Realloc(page->anchors, cap * sizeof(Anchor));
            if (a == NULL) return BAIL;
            page->anchors = a, page->anchors_cap = cap;
        }
        page->anchors[page->n_anchors++] = (Anchor){link.url, link.rel, link.rel_kind};
        return 0;
    }
    int img = is_path(s, &link, IMG_PATH);
    if (img <= 0) return img < 0 ? BAIL : 0;
    if (link.url_kind == 2 || link.url_kind == 3 || link.alt_kind == 3) return BAIL; /* msgspec's path says why */
    PyObject *url = link.url_kind == 1 ? to_str(s, &link.url) : PyUnicode_FromStringAndSize("", 0);
    if (url == NULL) return BAIL;
    PyObject *alt = link.alt_kind == 1 ? to_str(s, &link.alt) : Py_NewRef(Py_None);
    if (alt == NULL) {
        Py_DECREF(url);
        return BAIL;
    }
    PyObject *pair = PyTuple_Pack(2, url, alt);
    Py_DECREF(url);
    Py_DECREF(alt);
    if (pair == NULL) return BAIL;
    int err = PyList_Append(page->links, pair);
    Py_DECREF(pair);
    return err ? BAIL : 0;
}

typedef struct {
    int seen;
    Page *page;
} Level;

/* An object read by `member` for the page; `required`: the bits of the keys it must hold. */
static int nested(Scan *s, Page *page, Member member, int required) {
    Level level = {0, page};
    return object(s, member, &level) || TWICE(&level) || (level.seen & required) != required ? BAIL : 0;
}

/* A value kept as its raw JSON (where it starts and ends in the payload). */
static int raw(Scan *s, const char **start, const char **end) {
    *start = s->p;
    if (skip_value(s)) return BAIL;
    *end = s->p;
    return 0;
}

static int head_member(Scan *s, const Str *key, void *state) {
    Level *st = state;
    if (KEY("Base", 0)) {
        if (s->p < s->end && *s->p == '"') {
            Str str;
            if (scan_string(s, &str)) return BAIL;
            Py_CLEAR(st->page->base);
            st->page->base = to_str(s, &str);
            return st->page->base == NULL ? BAIL : 0;
        }
        return skip_decoded(s); /* not a string: no base */
    }
    if (KEY("Metas", 1)) return raw(s, &st->page->metas, &st->page->metas_end);
    if (KEY("Link", 2)) return raw(s, &st->page->head_links, &st->page->head_links_end);
    return skip_value(s);
}

static int html_member(Scan *s, const Str *key, void *state) {
    Level *st = state;
    if (KEY("Head", 0)) return nested(s, st->page, head_member, 0);
    if (KEY("Links", 1)) return array(s, link_element, st->page);
    return skip_value(s);
}

static int message_member(Scan *s, const Str *key, void *state) {
    Level *st = state;
    if (!KEY("Status", 0)) return skip_value(s);
    /* int(message["Status"]): a string or a number of digits only is read here; anything else by msgspec's path */
    const char *start = s->p;
    Str str;
    size_t n;
    const char *digits;
    if (s->p < s->end && *s->p == '"') {
        if (scan_string(s, &str) || str.escaped) return BAIL;
        digits = str.start, n = str.len;
    } else {
        if (skip_number(s)) return BAIL;
        digits = start, n = (size_t)(s->p - start);
    }
    if (n == 0 || n > 9) return BAIL;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (digits[i] < '0' || digits[i] > '9') return BAIL;
        v = v * 10 + (digits[i] - '0');
    }
    st->page->status = v;
    return 0;
}

static int http_member(Scan *s, const Str *key, void *state) {
    Level *st = state;
    if (KEY("Response-Message", 0)) {
        if (s->p < s->end && *s->p == '{') { /* decoded whole (typed Any): its keys too */
            Level message = {0, st->page};
            s->validate = 1;
            int err = object(s, message_member, &message);
            s->validate = 0;
            return err || TWICE(&message) ? BAIL : 0;
        }
        return skip_decoded(s); /* message["Status"] of a non-object: no status */
    }
    if (KEY("Headers", 1)) return raw(s, &st->page->headers, &st->page->headers_end);
    if (KEY("HTML-Metadata", 2)) {
        st->page->has_html = 1;
        return nested(s, st->page, html_member, 0);
    }
    return skip_value(s);
}

static int payload_member(Scan *s, const Str *key, void *state) {
    Level *st = state;
    if (KEY("HTTP-Response-Metadata", 0)) {
        st->page->has_http = 1;
        return nested(s, st->page, http_member, 0);
    }
    return skip_value(s);
}

static int header_member(Scan *s, const Str *key, void *state) {
    Level *st = state;
    if (KEY("WARC-Target-URI", 0)) {
        Str str;
        if (s->p >= s->end || *s->p != '"' || scan_string(s, &str)) return BAIL;
        Py_CLEAR(st->page->page_url); /* written twice: the record goes to msgspec, the first is not kept */
        st->page->page_url = to_str(s, &str);
        return st->page->page_url == NULL ? BAIL : 0;
    }
    return skip_value(s);
}

static int envelope_member(Scan *s, const Str *key, void *state) {
    Level *st = state;
    if (KEY("WARC-Header-Metadata", 0)) return nested(s, st->page, header_member, 1); /* WARC-Target-URI */
    if (KEY("Payload-Metadata", 1)) return nested(s, st->page, payload_member, 0);
    return skip_value(s);
}

static int root_member(Scan *s, const Str *key, void *state) {
    Level *st = state;
    if (KEY("Envelope", 0)) return nested(s, st->page, envelope_member, 2); /* Payload-Metadata */
    return skip_value(s);
}

/* ---- license links (wat._license_links), on pages that mention creativecommons.org ---- */

static int holds_marker(Scan *s, const Str *str) {
    size_t n;
    const char *b = unescaped(s, str, &n);
    return b == NULL ? -1 : memmem(b, n, LICENSE_MARKER, sizeof(LICENSE_MARKER) - 1) != NULL;
}

typedef struct {
    PyObject *out, *is_license_rel;
    int every;
} HeadLinks;

/* A <link> of Head.Link: a candidate when its url is a string, its rel says license, and it may resolve to
   creativecommons.org. */
static int head_link_element(Scan *s, void *state) {
    HeadLinks *h = state;
    Link link = {0};
    if (object(s, link_member, &link) || TWICE(&link)) return BAIL;
    if (link.url_kind > 1 || link.rel_kind != 1) return 0; /* is_license_rel of no string: False */
    if (link.url_kind == 0) link.url = (Str){"", 0, 0}; /* msgspec's default: "" */
    if (!h->every) {
        int found = holds_marker(s, &link.url);
        if (found <= 0) return found < 0 ? BAIL : 0;
    }
    PyObject *rel = to_str(s, &link.rel);
    if (rel == NULL) return BAIL;
    PyObject *yes = PyObject_CallOneArg(h->is_license_rel, rel);
    int license = yes == NULL ? -1 : PyObject_IsTrue(yes);
    Py_XDECREF(yes);
    PyObject *url = license == 1 ? to_str(s, &link.url) : NULL;
    PyObject *pair = url == NULL ? NULL : PyTuple_Pack(2, url, rel);
    int err = license < 0 || (license == 1 && (pair == NULL || PyList_Append(h->out, pair)));
    Py_XDECREF(url);
    Py_XDECREF(pair);
    Py_DECREF(rel);
    return err ? BAIL : 0;
}

static PyObject *marker_str; /* LICENSE_MARKER as a str */

static int contains_marker(PyObject *text) {
    return text != NULL && PyUnicode_Find(text, marker_str, 0, PY_SSIZE_T_MAX, 1) >= 0;
}

/* PageLinks.license_links: the Head.Link candidates, then the <a> ones, each in page order; NULL: bail. */
static PyObject *license_links(Scan *s, Page *pg, PyObject *is_license_rel) {
    HeadLinks h = {PyList_New(0), is_license_rel, contains_marker(pg->page_url) || contains_marker(pg->base)};
    if (h.out == NULL) return NULL;
    if (pg->head_links != NULL) {
        const char *p = s->p, *end = s->end;
        s->p = pg->head_links, s->end = pg->head_links_end;
        int err = array(s, head_link_element, &h);
        s->p = p, s->end = end;
        if (err) goto fail;
    }
    for (size_t i = 0; i < pg->n_anchors; i++) {
        Anchor *a = &pg->anchors[i];
        if (!h.every) {
            int found = holds_marker(s, &a->url);
            if (found < 0) goto fail;
            if (!found) continue;
        }
        PyObject *url = to_str(s, &a->url);
        PyObject *rel = a->rel_kind == 1 ? to_str(s, &a->rel) : Py_NewRef(Py_None);
        PyObject *pair = url && rel ? PyTuple_Pack(2, url, rel) : NULL;
        int err = pair == NULL || PyList_Append(h.out, pair);
        Py_XDECREF(url);
        Py_XDECREF(rel);
        Py_XDECREF(pair);
        if (err) goto fail;
    }
    return h.out;
fail:
    Py_DECREF(h.out);
    return NULL;
}

/* Whether raw JSON mentions one of the names (lowercase ASCII), case-insensitively (wat._mentions). */
static int mentions(const char *start, const char *end, PyObject *names) {
    if (start == NULL) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        const char *n = PyBytes_AS_STRING(name);
        Py_ssize_t len = PyBytes_GET_SIZE(name);
        if (len == 0) return 1;
        for (const char *p = start; end - p >= len; p++) {
            Py_ssize_t k = 0;
            while (k < len && Py_TOLOWER((unsigned char)p[k]) == (unsigned char)n[k]) k++;
            if (k == len) return 1;
        }
    }
    return 0;
}

/* The raw JSON of Head.Metas or Headers as bytes when it mentions one of the names (wat.py decodes those the
   way it decodes msgspec's raw values), else None. */
static PyObject *raw_if_named(const char *start, const char *end, PyObject *names) {
    if (!mentions(start, end, names)) return Py_NewRef(Py_None);
    return PyBytes_FromStringAndSize(start, end - start);
}

static PyObject *page(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[1]) || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "page(payload: bytes, meta_names: tuple[bytes], header_names: tuple[bytes], is_license_rel)");
        return NULL;
    }
    for (int t = 1; t < 3; t++)
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[t]); i++)
            if (!PyBytes_Check(PyTuple_GET_ITEM(args[t], i))) {
                PyErr_SetString(PyExc_TypeError, "names must be bytes");
                return NULL;
            }
    const char *data = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Scan s = {data, data + size, 0, 0, NULL, 0};
    Page pg = {0};
    pg.status = -1;
    pg.marker = memmem(data, size, LICENSE_MARKER, sizeof(LICENSE_MARKER) - 1) != NULL;
    pg.links = PyList_New(0);
    if (pg.links == NULL) return NULL;
    Level root = {0, &pg};
    skip_ws(&s);
    int bail = object(&s, root_member, &root) || TWICE(&root) || !(root.seen & 1);
    if (!bail) {
        skip_ws(&s);
        bail = s.p != s.end;
    }
    PyObject *result = NULL, *licenses = NULL;
    if (PyErr_Occurred()) { /* out of memory: not a bail */
        result = NULL;
    } else if (bail) {
        result = Py_NewRef(Py_False);
    } else if (!pg.has_http || !pg.has_html) {
        result = Py_NewRef(Py_None);
    } else if (pg.page_url == NULL) {
        result = Py_NewRef(Py_False); /* no WARC-Target-URI: msgspec's path says why */
    } else if ((licenses = pg.marker ? license_links(&s, &pg, args[3]) : PyList_New(0)) == NULL) {
        result = PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_UnicodeDecodeError) ? NULL : Py_NewRef(Py_False);
        if (result != NULL) PyErr_Clear();
    } else {
        PyObject *status = pg.status < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(pg.status);
        PyObject *metas = raw_if_named(pg.metas, pg.metas_end, args[1]);
        PyObject *headers = raw_if_named(pg.headers, pg.headers_end, args[2]);
        if (status != NULL && metas != NULL && headers != NULL)
            result = PyTuple_Pack(7, pg.page_url, pg.base ? pg.base : Py_None, status, pg.links, licenses, metas, headers);
        Py_XDECREF(status);
        Py_XDECREF(metas);
        Py_XDECREF(headers);
    }
    Py_XDECREF(licenses);
    PyMem_Free(s.scratch);
    PyMem_Free(pg.anchors);
    Py_XDECREF(pg.page_url);
    Py_XDECREF(pg.base);
    Py_DECREF(pg.links);
    return result;
}

static PyMethodDef methods[] = {
    {"page", (PyCFunction)(void (*)(void))page, METH_FASTCALL,
     "page(payload, meta_names, header_names, is_license_rel) -> (page_url, base, status, links, license_links, "
     "metas_raw, headers_raw), None (no HTML response) or False (read it with msgspec)"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_watjson", "WAT JSON fast path", -1, methods};

PyMODINIT_FUNC PyInit__watjson(void) {
    marker_str = PyUnicode_FromString(LICENSE_MARKER);
    return marker_str == NULL ? NULL : PyModule_Create(&module);
}
