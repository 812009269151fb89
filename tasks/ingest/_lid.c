/* fastText supervised-model prediction (the top label), for language id with lid.176.

   The same label and probability as fastText's own predictLine (k=1, threshold 0) for every text: the same
   tokens (split on ASCII whitespace and NUL, then the end-of-sentence token), the same word and character
   n-gram ids (FNV-1a over the UTF-8 bytes, pruned buckets remapped), the same float arithmetic for the hidden
   vector and the hierarchical softmax's depth-first search. What it saves is fastText's cost around that
   arithmetic: a string built per n-gram, two hash-map lookups per bucket, a stream per text, and the Python
   objects of its binding (language.py has the figures). tests/test_language.py compares it with fastText's
   own build, label and probability, on the synthetic world's and the real pages' captions.

   Reads fastText's model file (version 11 or 12; dense or product-quantised matrices), supervised models
   with the hierarchical softmax loss (`-loss hs`, as lid.176 is), and nothing else: any other file is a
   ValueError that says why. Quantised input rows are decoded once at load (lid.176.ftz: 50,000 rows of 16
   floats, 3.2 MB). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define FT_MAGIC 793712314
#define KSUB 256
#define MAX_DECODED ((int64_t)1 << 30) /* bytes of floats a quantised matrix may decode to */
#define LOSS_HS 1
#define MODEL_SUP 3
#define LABEL_PREFIX "__label__"
#define EOS "</s>"

typedef struct {
    const uint8_t *p, *end;
    const char *why;
} Reader;

static int take(Reader *r, void *out, size_t n) {
    if ((size_t)(r->end - r->p) < n) {
        r->why = "truncated";
        return -1;
    }
    memcpy(out, r->p, n);
    r->p += n;
    return 0;
}

typedef struct {
    int32_t node;
    float score;
} Visit;

typedef struct {
    int64_t m, n;
    float *rows;   /* m x n: dense values, or the decoded product-quantiser centroids (without the norm) */
    float *alpha;  /* per row: the quantised norm, or NULL (dense, or quantised without norms) */
} Matrix;

typedef struct {
    PyObject_HEAD
    int dim, minn, maxn, bucket;
    int32_t nwords, nlabels;
    /* words: open addressing over (FNV hash, bytes) -> id */
    char **word;
    int32_t *word_len;
    int8_t *word_type;
    int32_t *table;
    uint32_t table_mask;
    /* each word's input rows (itself and its character n-grams), flat */
    int32_t *sub_start, *sub;
    /* pruned n-gram buckets: open addressing bucket -> row - nwords; n_prune < 0: none pruned */
    int64_t n_prune;
    int32_t *prune_key, *prune_val;
    uint32_t prune_mask;
    Matrix in, out;   /* input rows: alpha folded in at load (fastText adds alpha * centroid) */
    int32_t *left, *right;  /* the Huffman tree over the labels (nodes nlabels.. are internal) */
    Visit *stack; /* dfs's: one entry per node at most */
    int32_t eos;
    float log_threshold;
    PyObject *labels; /* tuple of str: the label names without the "__label__" prefix */
} Model;

static uint32_t fnv(const uint8_t *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint32_t)(int8_t)s[i]) * 16777619u;
    return h;
}

static int32_t find_word(const Model *m, const uint8_t *s, size_t n) {
    uint32_t i = fnv(s, n) & m->table_mask;
    for (;;) {
        int32_t id = m->table[i];
        if (id < 0) return -1;
        if ((size_t)m->word_len[id] == n && memcmp(m->word[id], s, n) == 0) return id;
        i = (i + 1) & m->table_mask;
    }
}

/* The input row of n-gram bucket h, or -1 when pruned away (fastText's Dictionary::pushHash). */
static int32_t bucket_row(const Model *m, int32_t h) {
    if (m->n_prune == 0) return -1;
    if (m->n_prune < 0) return m->nwords + h;
    uint32_t i = ((uint32_t)h * 2654435761u) & m->prune_mask;
    for (;;) {
        int32_t key = m->prune_key[i];
        if (key == h) return m->nwords + m->prune_val[i];
        if (key < 0) return -1;
        i = (i + 1) & m->prune_mask;
    }
}

typedef struct {
    int32_t *v;
    size_t n, cap;
} Ids;

static int ids_push(Ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? 2 * ids->cap : 256;
        int32_t *v = PyMem_Realloc(ids->v, cap * sizeof(int32_t));
        if (v == NULL) return -1;
        ids->v = v, ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

/* The character n-grams (minn..maxn UTF-8 characters) of "<" word ">" (fastText's computeSubwords). */
static int subwords(const Model *m, const uint8_t *w, size_t len, Ids *out) {
    for (size_t i = 0; i < len; i++) {
        if ((w[i] & 0xC0) == 0x80) continue;
        uint32_t h = 2166136261u;
        size_t j = i;
        for (int n = 1; j < len && n <= m->maxn; n++) {
            h = (h ^ (uint32_t)(int8_t)w[j++]) * 16777619u;
            while (j < len && (w[j] & 0xC0) == 0x80) h = (h ^ (uint32_t)(int8_t)w[j++]) * 16777619u;
            if (n >= m->minn && !(n == 1 && (i == 0 || j == len))) {
                int32_t row = bucket_row(m, (int32_t)(h % (uint32_t)m->bucket));
                if (row >= 0 && ids_push(out, row) < 0) return -1;
            }
        }
    }
    return 0;
}

/* The rows one token adds (fastText's Dictionary::getLine and addSubwords); `bow` holds "<" token ">". */
static int token_rows(const Model *m, const uint8_t *tok, size_t n, uint8_t *bow, Ids *out) {
    int32_t id = find_word(m, tok, n);
    if (id >= 0) {
        if (m->word_type[id] != 0) return 0; /* a label */
        for (int32_t k = m->sub_start[id]; k < m->sub_start[id + 1]; k++)
            if (ids_push(out, m->sub[k]) < 0) return -1;
        return 0;
    }
    if (n >= sizeof(LABEL_PREFIX) - 1 && memcmp(tok, LABEL_PREFIX, sizeof(LABEL_PREFIX) - 1) == 0) return 0;
    if (n == sizeof(EOS) - 1 && memcmp(tok, EOS, n) == 0) return 0;
    bow[0] = '<';
    memcpy(bow + 1, tok, n);
    bow[n + 1] = '>';
    return subwords(m, bow, n + 2, out);
}

static int is_space(uint8_t c) {
    return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\v' || c == '\f' || c == '\0';
}

static float std_log(float x) { return (float)log((double)x + 1e-5); }

typedef struct {
    float score;
    int32_t node; /* -1: none yet */
} Best;

/* HierarchicalSoftmaxLoss::dfs with k = 1: the same visiting order (left subtree first), pruning and tie rule (a
   later leaf with an equal score wins), so the same label as fastText; a stack of its own in place of the
   recursion (a tree of a crafted file may be a chain as deep as its labels). */
static void dfs(const Model *m, const float *hidden, Visit *stack, Best *best) {
    size_t top = 0;
    stack[top++] = (Visit){2 * m->nlabels - 2, 0.0f};
    while (top > 0) {
        Visit v = stack[--top];
        if (v.score < m->log_threshold) continue;
        if (best->node >= 0 && v.score < best->score) continue;
        if (m->left[v.node] == -1 && m->right[v.node] == -1) {
            best->score = v.score, best->node = v.node;
            continue;
        }
        const int64_t row = v.node - m->nlabels;
        const float *w = m->out.rows + row * m->out.n;
        float f = 0.0f;
        for (int64_t j = 0; j < m->out.n; j++) f += w[j] * hidden[j];
        if (m->out.alpha) f *= m->out.alpha[row];
        f = (float)(1. / (1.0f + expf(-f)));
        stack[top++] = (Visit){m->right[v.node], v.score + std_log(f)};
        stack[top++] = (Visit){m->left[v.node], v.score + std_log((float)(1.0 - f))};
    }
}

/* The label of one UTF-8 text (at most the caller's characters), or -1 when fastText predicts none. */
static int predict_one(const Model *m, const uint8_t *s, size_t len, Ids *ids, uint8_t *bow, float *hidden,
                       float *prob) {
    ids->n = 0;
    size_t i = 0;
    int stopped = 0;
    while (i < len && !stopped) {
        while (i < len && is_space(s[i])) i++;
        if (i == len) break;
        size_t start = i;
        while (i < len && !is_space(s[i])) i++;
        if (token_rows(m, s + start, i - start, bow, ids) < 0) return -2;
        stopped = i - start == sizeof(EOS) - 1 && memcmp(s + start, EOS, i - start) == 0;
    }
    if (!stopped && m->eos >= 0 && token_rows(m, (const uint8_t *)EOS, sizeof(EOS) - 1, bow, ids) < 0) return -2;
    if (ids->n == 0) return -1;
    const int dim = m->dim;
    for (int j = 0; j < dim; j++) hidden[j] = 0.0f;
    for (size_t k = 0; k < ids->n; k++) {
        const float *row = m->in.rows + (int64_t)ids->v[k] * dim;
        for (int j = 0; j < dim; j++) hidden[j] += row[j];
    }
    const float scale = (float)(1.0 / (double)ids->n);
    for (int j = 0; j < dim; j++) hidden[j] *= scale;
    Best best = {0.0f, -1};
    dfs(m, hidden, m->stack, &best);
    if (best.node < 0) return -1;
    *prob = expf(best.score);
    return best.node;
}

/* UTF-8 bytes of at most `max_chars` characters of `text`; a lone surrogate is kept as its three bytes. */
static PyObject *utf8_of(PyObject *text, Py_ssize_t max_chars, const char **s, Py_ssize_t *n) {
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    if (PyUnicode_IS_ASCII(text)) {
        *s = (const char *)PyUnicode_DATA(text);
        *n = length < max_chars ? length : max_chars;
        Py_INCREF(text);
        return text;
    }
    PyObject *cut = length > max_chars ? PyUnicode_Substring(text, 0, max_chars) : (Py_INCREF(text), text);
    if (cut == NULL) return NULL;
    PyObject *bytes = PyUnicode_AsEncodedString(cut, "utf-8", "surrogatepass");
    Py_DECREF(cut);
    if (bytes == NULL) return NULL;
    *s = PyBytes_AS_STRING(bytes);
    *n = PyBytes_GET_SIZE(bytes);
    return bytes;
}

static PyObject *predict(Model *m, PyObject *const *args, Py_ssize_t nargs, int with_prob) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "predict(texts: list[str], max_chars: int)");
        return NULL;
    }
    Py_ssize_t max_chars = PyLong_AsSsize_t(args[1]);
    if (max_chars < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "max_chars must be >= 0");
        return NULL;
    }
    PyObject *texts = args[0];
    Py_ssize_t count = PyList_GET_SIZE(texts);
    PyObject *result = PyList_New(count);
    Ids ids = {NULL, 0, 0};
    uint8_t *bow = NULL;
    size_t bow_cap = 0;
    float *hidden = PyMem_Malloc(sizeof(float) * m->dim);
    if (hidden == NULL) PyErr_NoMemory();
    if (result == NULL || hidden == NULL) goto fail;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *text = PyList_GET_ITEM(texts, i);
        if (!PyUnicode_Check(text)) {
            PyErr_Format(PyExc_TypeError, "text %zd is %.100s, not str", i, Py_TYPE(text)->tp_name);
            goto fail;
        }
        const char *s;
        Py_ssize_t n;
        PyObject *holder = utf8_of(text, max_chars, &s, &n);
        if (holder == NULL) goto fail;
        if ((size_t)n + 2 > bow_cap) {
            bow_cap = (size_t)n + 2;
            uint8_t *b = PyMem_Realloc(bow, bow_cap);
            if (b == NULL) {
                PyErr_NoMemory();
                Py_DECREF(holder);
                goto fail;
            }
            bow = b;
        }
        float prob = 0.0f;
        int label = predict_one(m, (const uint8_t *)s, (size_t)n, &ids, bow, hidden, &prob);
        Py_DECREF(holder);
        if (label == -2) {
            PyErr_NoMemory();
            goto fail;
        }
        PyObject *item;
        if (label < 0) {
            item = Py_NewRef(Py_None);
        } else if (with_prob) {
            item = Py_BuildValue("(Of)", PyTuple_GET_ITEM(m->labels, label), prob);
            if (item == NULL) goto fail;
        } else {
            item = Py_NewRef(PyTuple_GET_ITEM(m->labels, label));
        }
        PyList_SET_ITEM(result, i, item);
    }
    PyMem_Free(ids.v);
    PyMem_Free(bow);
    PyMem_Free(hidden);
    return result;
fail:
    Py_XDECREF(result);
    PyMem_Free(ids.v);
    PyMem_Free(bow);
    PyMem_Free(hidden);
    return NULL;
}

static PyObject *Model_predict(Model *m, PyObject *const *args, Py_ssize_t nargs) {
    return predict(m, args, nargs, 0);
}

static PyObject *Model_predict_with_probability(Model *m, PyObject *const *args, Py_ssize_t nargs) {
    return predict(m, args, nargs, 1);
}

/* ---- loading ---- */

static int load_matrix(Reader *r, int quantised, int fold_alpha, Matrix *out) {
    if (!quantised) {
        if (take(r, &out->m, 8) || take(r, &out->n, 8)) return -1;
        if (out->m < 0 || out->n <= 0 || out->n > 4096 || (uint64_t)out->m > (uint64_t)(r->end - r->p) / 4 / out->n) {
            r->why = "dense matrix larger than the file";
            return -1;
        }
        out->rows = PyMem_Malloc(sizeof(float) * out->m * out->n);
        if (out->rows == NULL) return -2;
        return take(r, out->rows, sizeof(float) * out->m * out->n);
    }
    uint8_t qnorm;
    int32_t codesize, dim, nsubq, dsub, lastdsub;
    if (take(r, &qnorm, 1) || take(r, &out->m, 8) || take(r, &out->n, 8) || take(r, &codesize, 4)) return -1;
    const uint8_t *codes = r->p;
    if (codesize < 0 || codesize > r->end - r->p) {
        r->why = "codes larger than the file";
        return -1;
    }
    r->p += codesize;
    if (take(r, &dim, 4) || take(r, &nsubq, 4) || take(r, &dsub, 4) || take(r, &lastdsub, 4)) return -1;
    if (out->n <= 0 || out->n > 4096 || dim != out->n || nsubq <= 0 || nsubq > dim || dsub <= 0 || lastdsub <= 0 ||
        (int64_t)(nsubq - 1) * dsub + lastdsub != dim || out->m < 0 || out->m > codesize ||
        (int64_t)codesize != out->m * nsubq || (int64_t)dim * KSUB * 4 > r->end - r->p) {
        r->why = "inconsistent product quantiser";
        return -1;
    }
    const float *centroids = (const float *)r->p; /* read with memcpy below: the file's floats may be unaligned */
    r->p += (size_t)dim * KSUB * 4;
    const uint8_t *norm_codes = NULL;
    float norm_centroids[KSUB];
    if (qnorm) {
        int32_t ndim, nnsubq, ndsub, nlastdsub;
        if (out->m > r->end - r->p) {
            r->why = "norm codes larger than the file";
            return -1;
        }
        norm_codes = r->p;
        r->p += out->m;
        if (take(r, &ndim, 4) || take(r, &nnsubq, 4) || take(r, &ndsub, 4) || take(r, &nlastdsub, 4)) return -1;
        if (ndim != 1 || nnsubq != 1 || ndsub != 1 || nlastdsub != 1) {
            r->why = "unexpected norm quantiser";
            return -1;
        }
        if (take(r, norm_centroids, sizeof(norm_centroids))) return -1;
    }
    if (out->m * out->n > MAX_DECODED / 4) { /* a few MB of codes may stand for many GB of floats */
        r->why = "a quantised matrix that decodes to over 1 GiB";
        return -1;
    }
    out->rows = PyMem_Malloc(sizeof(float) * out->m * out->n);
    if (out->rows == NULL) return -2;
    if (qnorm && !fold_alpha) {
        out->alpha = PyMem_Malloc(sizeof(float) * out->m);
        if (out->alpha == NULL) return -2;
    }
    for (int64_t t = 0; t < out->m; t++) {
        float alpha = qnorm ? norm_centroids[norm_codes[t]] : 1.0f;
        float *row = out->rows + t * out->n;
        for (int32_t s = 0; s < nsubq; s++) {
            int32_t d = s == nsubq - 1 ? lastdsub : dsub;
            size_t at = s == nsubq - 1 ? (size_t)s * KSUB * dsub + (size_t)codes[t * nsubq + s] * lastdsub
                                       : ((size_t)s * KSUB + codes[t * nsubq + s]) * dsub;
            for (int32_t k = 0; k < d; k++) {
                float c;
                memcpy(&c, (const uint8_t *)centroids + 4 * (at + k), 4);
                row[s * dsub + k] = fold_alpha ? alpha * c : c;
            }
        }
        if (out->alpha) out->alpha[t] = alpha;
    }
    return 0;
}

static uint32_t table_size(int64_t n) {
    uint32_t size = 16;
    while (size < 2 * (uint64_t)n) size *= 2;
    return size;
}

static int load(Model *m, Reader *r) {
    int32_t magic, version, a[12];
    double t;
    if (take(r, &magic, 4) || take(r, &version, 4)) return -1;
    if (magic != FT_MAGIC || version < 11 || version > 12) {
        r->why = "not a fastText model (magic number or version)";
        return -1;
    }
    if (take(r, a, sizeof(a)) || take(r, &t, 8)) return -1;
    /* dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate */
    m->dim = a[0], m->bucket = a[8], m->minn = a[9], m->maxn = a[10];
    if (a[7] != MODEL_SUP || a[6] != LOSS_HS) {
        r->why = "only supervised models with the hierarchical softmax loss (as lid.176) are read";
        return -1;
    }
    if (a[5] > 1) {
        r->why = "word n-grams (wordNgrams > 1) are not read";
        return -1;
    }
    if (version == 11) m->maxn = 0; /* fastText: supervised models of version 11 have no subwords */
    if (m->dim <= 0 || m->dim > 4096 || m->bucket <= 0) {
        r->why = "bad dimensions";
        return -1;
    }
    int32_t size;
    int64_t ntokens;
    if (take(r, &size, 4) || take(r, &m->nwords, 4) || take(r, &m->nlabels, 4) || take(r, &ntokens, 8) ||
        take(r, &m->n_prune, 8))
        return -1;
    if (size < 0 || m->nwords < 0 || m->nlabels < 2 || (int64_t)m->nwords + m->nlabels != size) {
        r->why = "bad dictionary sizes";
        return -1;
    }
    if (size > r->end - r->p || m->n_prune > (r->end - r->p) / 8) {
        r->why = "dictionary larger than the file";
        return -1;
    }
    m->word = PyMem_Calloc(size, sizeof(char *));
    m->word_len = PyMem_Calloc(size, sizeof(int32_t));
    m->word_type = PyMem_Calloc(size, 1);
    int64_t *counts = PyMem_Calloc(m->nlabels, sizeof(int64_t));
    m->table_mask = table_size(size) - 1;
    m->table = PyMem_Malloc(sizeof(int32_t) * (m->table_mask + 1));
    if (!m->word || !m->word_len || !m->word_type || !counts || !m->table) {
        PyMem_Free(counts);
        return -2;
    }
    memset(m->table, 0xff, sizeof(int32_t) * (m->table_mask + 1));
    m->eos = -1;
    for (int32_t i = 0; i < size; i++) {
        const uint8_t *nul = memchr(r->p, 0, r->end - r->p);
        int64_t count;
        if (nul == NULL) {
            PyMem_Free(counts);
            r->why = "truncated";
            return -1;
        }
        m->word_len[i] = (int32_t)(nul - r->p);
        m->word[i] = PyMem_Malloc(m->word_len[i] + 1);
        if (m->word[i] == NULL) {
            PyMem_Free(counts);
            return -2;
        }
        memcpy(m->word[i], r->p, m->word_len[i] + 1);
        r->p = nul + 1;
        if (take(r, &count, 8) || take(r, &m->word_type[i], 1)) {
            PyMem_Free(counts);
            return -1;
        }
        if ((m->word_type[i] != 0) != (i >= m->nwords)) {
            PyMem_Free(counts);
            r->why = "words and labels out of order";
            return -1;
        }
        if (i >= m->nwords) {
            if (count < 0 || count >= (int64_t)1e15) { /* the tree's internal nodes start at 1e15 (buildTree) */
                PyMem_Free(counts);
                r->why = "a label count out of range";
                return -1;
            }
            counts[i - m->nwords] = count;
        }
        if (find_word(m, (const uint8_t *)m->word[i], m->word_len[i]) >= 0) {
            PyMem_Free(counts);
            r->why = "a word listed twice";
            return -1;
        }
        uint32_t at = fnv((const uint8_t *)m->word[i], m->word_len[i]) & m->table_mask;
        while (m->table[at] >= 0) at = (at + 1) & m->table_mask;
        m->table[at] = i;
        if (m->word_len[i] == sizeof(EOS) - 1 && memcmp(m->word[i], EOS, sizeof(EOS) - 1) == 0) m->eos = i;
    }
    if (m->n_prune > 0) {
        m->prune_mask = table_size(m->n_prune) - 1;
        m->prune_key = PyMem_Malloc(sizeof(int32_t) * (m->prune_mask + 1));
        m->prune_val = PyMem_Malloc(sizeof(int32_t) * (m->prune_mask + 1));
        if (!m->prune_key || !m->prune_val) {
            PyMem_Free(counts);
            return -2;
        }
        memset(m->prune_key, 0xff, sizeof(int32_t) * (m->prune_mask + 1));
        for (int64_t i = 0; i < m->n_prune; i++) {
            int32_t kv[2];
            if (take(r, kv, 8)) {
                PyMem_Free(counts);
                return -1;
            }
            if (kv[0] < 0 || kv[1] < 0) {
                PyMem_Free(counts);
                r->why = "negative pruned bucket";
                return -1;
            }
            uint32_t at = ((uint32_t)kv[0] * 2654435761u) & m->prune_mask;
            while (m->prune_key[at] >= 0 && m->prune_key[at] != kv[0]) at = (at + 1) & m->prune_mask;
            m->prune_key[at] = kv[0], m->prune_val[at] = kv[1]; /* a repeated key: the last wins, as in a map */
        }
    }
    uint8_t quant_input, qout;
    int err = take(r, &quant_input, 1);
    if (!err) err = load_matrix(r, quant_input, 1, &m->in);
    if (!err && !quant_input && m->n_prune >= 0) {
        r->why = "a pruned dictionary with a dense input matrix";
        err = -1;
    }
    if (!err) err = take(r, &qout, 1);
    if (!err) err = load_matrix(r, quant_input && qout, 0, &m->out);
    if (err) {
        PyMem_Free(counts);
        return err;
    }
    int bad = m->in.n != m->dim || m->out.n != m->dim || m->out.m < m->nlabels - 1 ||
              (m->n_prune < 0 && m->in.m < (int64_t)m->nwords + m->bucket);
    for (uint32_t i = 0; m->n_prune > 0 && i <= m->prune_mask; i++)
        bad |= m->prune_key[i] >= 0 && (int64_t)m->nwords + m->prune_val[i] >= m->in.m;
    if (bad) {
        PyMem_Free(counts);
        r->why = "matrix sizes do not match the dictionary";
        return -1;
    }
    /* each word's rows: itself, then its n-grams (fastText's initNgrams) */
    m->sub_start = PyMem_Malloc(sizeof(int32_t) * (size + 1));
    Ids rows = {NULL, 0, 0};
    uint8_t *bow = NULL;
    if (m->sub_start == NULL) err = -2;
    for (int32_t i = 0; i < size && !err; i++) {
        m->sub_start[i] = (int32_t)rows.n;
        if (ids_push(&rows, i) < 0) err = -2;
        if (!err && i != m->eos) {
            uint8_t *b = PyMem_Realloc(bow, m->word_len[i] + 2);
            if (b == NULL) {
                err = -2;
                break;
            }
            bow = b;
            bow[0] = '<';
            memcpy(bow + 1, m->word[i], m->word_len[i]);
            bow[m->word_len[i] + 1] = '>';
            if (subwords(m, bow, m->word_len[i] + 2, &rows) < 0) err = -2;
        }
    }
    PyMem_Free(bow);
    if (!err) m->sub_start[size] = (int32_t)rows.n;
    m->sub = rows.v;
    for (size_t k = 0; k < rows.n && !err; k++) {
        if (rows.v[k] >= m->in.m) {
            r->why = "a row beyond the input matrix";
            err = -1;
        }
    }
    /* the Huffman tree over the label counts (HierarchicalSoftmaxLoss::buildTree) */
    int32_t osz = m->nlabels, nodes = 2 * osz - 1;
    int64_t *count = PyMem_Malloc(sizeof(int64_t) * nodes);
    m->left = PyMem_Malloc(sizeof(int32_t) * nodes);
    m->right = PyMem_Malloc(sizeof(int32_t) * nodes);
    m->stack = PyMem_Malloc(sizeof(Visit) * (nodes + 1));
    if (!err && (!count || !m->left || !m->right || !m->stack)) err = -2;
    if (!err) {
        for (int32_t i = 0; i < nodes; i++) count[i] = i < osz ? counts[i] : (int64_t)1e15, m->left[i] = m->right[i] = -1;
        int32_t leaf = osz - 1, node = osz;
        for (int32_t i = osz; i < nodes; i++) {
            int32_t mini[2];
            for (int j = 0; j < 2; j++) mini[j] = (leaf >= 0 && count[leaf] < count[node]) ? leaf-- : node++;
            m->left[i] = mini[0], m->right[i] = mini[1];
            count[i] = count[mini[0]] + count[mini[1]];
        }
    }
    PyMem_Free(count);
    PyMem_Free(counts);
    if (err) return err;
    m->log_threshold = std_log(0.0f);
    m->labels = PyTuple_New(osz);
    if (m->labels == NULL) return -3;
    for (int32_t i = 0; i < osz; i++) {
        int32_t at = m->nwords + i, skip = m->word_len[at] >= 9 ? 9 : m->word_len[at];
        PyObject *label = PyUnicode_DecodeUTF8(m->word[at] + skip, m->word_len[at] - skip, "replace");
        if (label == NULL) return -3;
        PyTuple_SET_ITEM(m->labels, i, label);
    }
    return 0;
}

static void Model_dealloc(Model *m) {
    if (m->word) {
        for (int64_t i = 0; i < (int64_t)m->nwords + m->nlabels; i++) PyMem_Free(m->word[i]);
    }
    PyMem_Free(m->word);
    PyMem_Free(m->word_len);
    PyMem_Free(m->word_type);
    PyMem_Free(m->table);
    PyMem_Free(m->sub_start);
    PyMem_Free(m->sub);
    PyMem_Free(m->prune_key);
    PyMem_Free(m->prune_val);
    PyMem_Free(m->in.rows);
    PyMem_Free(m->in.alpha);
    PyMem_Free(m->out.rows);
    PyMem_Free(m->out.alpha);
    PyMem_Free(m->left);
    PyMem_Free(m->right);
    PyMem_Free(m->stack);
    Py_XDECREF(m->labels);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *Model_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*:Model", &data)) return NULL;
    Model *m = (Model *)type->tp_alloc(type, 0);
    if (m == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    Reader r = {data.buf, (const uint8_t *)data.buf + data.len, NULL};
    int err = load(m, &r);
    PyBuffer_Release(&data);
    if (err) {
        if (err == -1) PyErr_Format(PyExc_ValueError, "not a readable fastText model: %s", r.why);
        else if (err == -2) PyErr_NoMemory();
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}

static PyObject *Model_get_labels(Model *m, void *closure) { return Py_NewRef(m->labels); }

static PyMethodDef Model_methods[] = {
    {"predict", (PyCFunction)(void (*)(void))Model_predict, METH_FASTCALL,
     "predict(texts, max_chars) -> list of the top label of each text (of its first max_chars characters), None "
     "where fastText predicts none"},
    {"predict_with_probability", (PyCFunction)(void (*)(void))Model_predict_with_probability, METH_FASTCALL,
     "predict_with_probability(texts, max_chars) -> list of (label, probability) or None"},
    {NULL}};

static PyGetSetDef Model_getset[] = {{"labels", (getter)Model_get_labels, NULL, "the labels, prefix removed"}, {NULL}};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "clipcrawl.tasks.ingest._lid.Model",
    .tp_doc = "Model(data: bytes): a fastText supervised model (hierarchical softmax) read from its file's bytes",
    .tp_basicsize = sizeof(Model),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Model_new,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lid", "fastText language id, top label only", -1, NULL};

PyMODINIT_FUNC PyInit__lid(void) {
    if (PyType_Ready(&ModelType) < 0) return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL) return NULL;
    if (PyModule_AddObjectRef(mod, "Model", (PyObject *)&ModelType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
