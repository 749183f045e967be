/* The pixel loops of the drawing engines, compiled (`make venv` builds chart/_kernel.so from this file).
 *
 * Integer arithmetic only: every float -> row computation stays in numpy (chart/raster.py, chart/jkx.py),
 * which hands this module integer rows, so the pixels are the same on every platform and compiler.
 * Each function checks every coordinate it is given against the image before writing anything: a bad
 * row raises ValueError instead of writing outside the buffer. Large images are drawn without the GIL.
 *
 *   mike(out, width, height, colours, grid_rows, left, slot, body, rows, up, bars)
 *       The mike preset, drawn straight into PNG's 4-bit rows (first pixel in the high nibble, an odd
 *       width padded with a zero nibble): what chart/png.py hashes and filters.
 *   jkx(out, width, height, price_h, rows, bars)
 *       A JKX image: 8-bit grayscale, 0 or 255.
 *   up_filter(rows, out, height)
 *       PNG's Up filter: each row after its filter-type byte 2, minus the row above modulo 256.
 *   deflate_runs(data) -> bytes
 *       A raw deflate stream of `data`: one block, each byte a literal and each run of it after that a
 *       match at distance 1, Huffman codes built from the block's counts by one fixed procedure. Its bytes
 *       depend on the data alone: no hash chains, no CPU-dependent code paths (ISA-L's gave other bytes for
 *       the same input in some processes); fast on filtered chart rows, which are mostly runs of zeros.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MARK 255
#define UP_FILTER 2
#define GIL_RELEASE_BYTES 65536
#define MAX_SIDE (1 << 20) /* px: far above any spec (chart/styles.py), low enough that no size overflows */

/* A contiguous buffer of `count` items of `itemsize` bytes, or an exception. */
static int check_items(const Py_buffer *buf, const char *name, Py_ssize_t count, Py_ssize_t itemsize) {
    if (buf->len != count * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd bytes, got %zd", name, count * itemsize, buf->len);
        return 0;
    }
    return 1;
}

static int check_range(const char *name, int64_t value, int64_t low, int64_t high) {
    if (value < low || value > high) {
        PyErr_Format(PyExc_ValueError, "%s %lld is outside %lld..%lld", name, (long long)value, (long long)low,
                     (long long)high);
        return 0;
    }
    return 1;
}

/* Pixels x0..x1-1 of a 4-bit row set to colour c (0..15). */
static void span4(uint8_t *row, int64_t x0, int64_t x1, uint8_t c) {
    if (x0 >= x1) return;
    if (x0 & 1) {
        row[x0 >> 1] = (uint8_t)((row[x0 >> 1] & 0xF0) | c);
        x0++;
    }
    int64_t even_end = x1 & ~(int64_t)1;
    if (x0 < even_end) memset(row + (x0 >> 1), c * 0x11, (size_t)((even_end - x0) >> 1));
    if (x1 & 1 && x1 - 1 >= x0) row[x1 >> 1] = (uint8_t)((row[x1 >> 1] & 0x0F) | (c << 4));
}

/* Rows r0..r1-1, pixels x0..x1-1 set to colour c: candle strokes are a few pixels wide and up to
 * hundreds of rows tall, so the byte edits of one row are worked out once and repeated. */
static void rect4(uint8_t *img, Py_ssize_t rowbytes, int64_t r0, int64_t r1, int64_t x0, int64_t x1, uint8_t c) {
    if (r0 >= r1 || x0 >= x1) return;
    int lead = x0 & 1, trail = x1 & 1;                  /* a low nibble first, a high nibble last */
    int64_t first = (x0 + lead) >> 1, stop = x1 >> 1;  /* whole bytes first..stop-1 */
    uint8_t both = (uint8_t)(c * 0x11), low = c, high = (uint8_t)(c << 4);
    uint8_t *p = img + r0 * rowbytes;
    for (int64_t r = r0; r < r1; r++, p += rowbytes) {
        if (lead) p[x0 >> 1] = (uint8_t)((p[x0 >> 1] & 0xF0) | low);
        for (int64_t k = first; k < stop; k++) p[k] = both;
        if (trail) p[stop] = (uint8_t)((p[stop] & 0x0F) | high);
    }
}

/* Lets other threads (Dask's, drawing other images) run Python while this one fills a large image from
 * buffers it holds; a small image is done sooner than another thread would hand the GIL back. */
static PyThreadState *release_gil(Py_ssize_t bytes) { return bytes >= GIL_RELEASE_BYTES ? PyEval_SaveThread() : NULL; }

enum { BACKGROUND, GRID, WICK, UP_EDGE, UP_BODY, DOWN_EDGE, DOWN_BODY, VOLUME, N_COLOURS };

static PyObject *mike(PyObject *self, PyObject *args) {
    Py_buffer out, colours, grid, rows, up, bars;
    Py_ssize_t width, height, left, slot, body;
    if (!PyArg_ParseTuple(args, "w*nny*y*nnny*y*y*", &out, &width, &height, &colours, &grid, &left, &slot, &body,
                          &rows, &up, &bars))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t rowbytes = (width + 1) / 2, n = bars.len / 8, n_grid = grid.len / 8;
    const uint8_t *ix = colours.buf;
    const int64_t *grid_rows = grid.buf, *row = rows.buf, *bar = bars.buf;
    const uint8_t *is_up = up.buf;
    if (!check_range("width", width, 1, MAX_SIDE) || !check_range("height", height, 1, MAX_SIDE)
        || !check_items(&out, "out", height * rowbytes, 1)
        || !check_items(&colours, "colours", N_COLOURS, 1) || !check_items(&grid, "grid_rows", n_grid, 8)
        || !check_items(&rows, "rows", 4 * n, 8) || !check_items(&up, "up", n, 1) || !check_items(&bars, "bars", n, 8))
        goto done;
    for (int k = 0; k < N_COLOURS; k++)
        if (!check_range("colour index", ix[k], 0, 15)) goto done;
    for (Py_ssize_t k = 0; k < n_grid; k++)
        if (!check_range("grid row", grid_rows[k], 0, height - 1)) goto done;
    if (!check_range("first candle x", left, 0, width - 1) || !check_range("candle body", body, 1, width)
        || !check_range("last candle end", left + (n ? n - 1 : 0) * slot + body, 1, width))
        goto done;
    if (n > 1 && !check_range("candle slot", slot, body, width)) goto done;
    int64_t bars_top = height; /* the first row any volume bar reaches */
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!check_range("volume bar", bar[k], 0, height)) goto done;
        if (bar[k] > 0 && height - bar[k] < bars_top) bars_top = height - bar[k];
    }
    /* Candles never overlap: neither side by side (slot >= body) nor price strokes over volume bars. */
    for (Py_ssize_t k = 0; k < 4 * n; k++)
        if (!check_range("price row", row[k], 0, bars_top - 1)) goto done;
    Py_ssize_t bar_rows = height - bars_top;
    uint8_t *mask = PyMem_Calloc(rowbytes, 1);
    Py_ssize_t *starting = PyMem_Malloc((bar_rows + 1) * sizeof(Py_ssize_t)), *next = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t));
    if (mask == NULL || starting == NULL || next == NULL) {
        PyErr_NoMemory();
        goto free;
    }

    PyThreadState *released = release_gil(out.len);
    uint8_t *img = out.buf;
    /* Background row, its padding nibble zero, copied down; then the grid lines. */
    memset(img, 0, rowbytes);
    span4(img, 0, width, ix[BACKGROUND]);
    for (Py_ssize_t r = 1; r < height; r++) memcpy(img + r * rowbytes, img, rowbytes);
    for (Py_ssize_t k = 0; k < n_grid; k++) span4(img + grid_rows[k] * rowbytes, 0, width, ix[GRID]);
    /* Per candle, in this order (later strokes cover earlier ones): wick, body edge, body fill. */
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t x = left + i * slot, open = row[4 * i], high = row[4 * i + 1], low = row[4 * i + 2],
                close = row[4 * i + 3];
        int64_t top = open < close ? open : close, end = (open > close ? open : close) + 1;
        uint8_t edge = is_up[i] ? ix[UP_EDGE] : ix[DOWN_EDGE], fill = is_up[i] ? ix[UP_BODY] : ix[DOWN_BODY];
        rect4(img, rowbytes, high, low + 1, x + body / 2, x + body / 2 + 1, ix[WICK]);
        rect4(img, rowbytes, top, end, x, x + body, edge);
        /* mike's up candles: a 1-px edge framing the body colour, where there is room for it. */
        if (fill != edge && end - top > 2) rect4(img, rowbytes, top + 1, end - 1, x + 1, x + body - 1, fill);
    }
    /* Volume bars row by row, not bar by bar (a bar drawn down the image misses the cache on every row):
     * going down, each row's bars are the row above's plus those starting there, kept as a nibble mask. */
    for (Py_ssize_t r = 0; r < bar_rows; r++) starting[r] = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (bar[i] == 0) continue;
        next[i] = starting[height - bar[i] - bars_top];
        starting[height - bar[i] - bars_top] = i;
    }
    uint8_t volume = (uint8_t)(ix[VOLUME] * 0x11);
    for (Py_ssize_t r = 0; r < bar_rows; r++) {
        for (Py_ssize_t i = starting[r]; i >= 0; i = next[i]) span4(mask, left + i * slot, left + i * slot + body, 0xF);
        uint8_t *p = img + (bars_top + r) * rowbytes;
        for (Py_ssize_t k = 0; k < rowbytes; k++) p[k] = (uint8_t)((p[k] & ~mask[k]) | (mask[k] & volume));
    }
    if (released != NULL) PyEval_RestoreThread(released);
    result = Py_NewRef(Py_None);
free:
    PyMem_Free(mask);
    PyMem_Free(starting);
    PyMem_Free(next);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&colours);
    PyBuffer_Release(&grid);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&up);
    PyBuffer_Release(&bars);
    return result;
}

/* floor(a / b) for b > 0, whatever the sign of a (C's `/` truncates towards zero). */
static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static int64_t abs64(int64_t v) { return v < 0 ? -v : v; }

static PyObject *jkx(PyObject *self, PyObject *args) {
    Py_buffer out, rows, bars;
    Py_ssize_t width, height, price_h;
    if (!PyArg_ParseTuple(args, "w*nnny*y*", &out, &width, &height, &price_h, &rows, &bars)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = width / 3;
    /* rows: n opens, n highs, n lows, n closes, n moving-average rows; bars: n volume bar heights. */
    const int64_t *open = rows.buf, *high = open + n, *low = high + n, *close = low + n, *ma = close + n;
    const int64_t *bar = bars.buf;
    if (!check_range("width", width, 3, MAX_SIDE) || !check_range("height", height, 1, MAX_SIDE)
        || !check_range("width mod 3", width % 3, 0, 0) || !check_range("price rows", price_h, 1, height)
        || !check_items(&out, "out", width * height, 1) || !check_items(&rows, "rows", 5 * n, 8)
        || !check_items(&bars, "bars", n, 8))
        goto done;
    for (Py_ssize_t k = 0; k < 5 * n; k++)
        if (!check_range("price row", open[k], 0, price_h - 1)) goto done;
    for (Py_ssize_t k = 0; k < n; k++)
        if (!check_range("volume bar", bar[k], 0, height)) goto done;

    PyThreadState *released = release_gil(out.len);
    uint8_t *img = out.buf;
    memset(img, 0, (size_t)(width * height));
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t centre = 3 * i + 1;
        for (int64_t r = high[i]; r <= low[i]; r++) img[r * width + centre] = MARK;
        img[open[i] * width + centre - 1] = MARK;
        img[close[i] * width + centre + 1] = MARK;
        for (int64_t r = height - bar[i]; r < height; r++) img[r * width + centre] = MARK;
    }
    /* The MA polyline through (centre, ma row): an integer DDA, one pixel per major step, each step
     * rounded half up as floor((2kd + s) / 2s). */
    img[ma[0] * width + 1] = MARK;
    for (Py_ssize_t i = 0; i + 1 < n; i++) {
        int64_t x0 = 3 * i + 1, y0 = ma[i], dx = 3, dy = ma[i + 1] - ma[i];
        int64_t s = abs64(dy) > dx ? abs64(dy) : dx;
        for (int64_t k = 0; k <= s; k++) {
            int64_t px = x0 + floor_div(2 * k * dx + s, 2 * s), py = y0 + floor_div(2 * k * dy + s, 2 * s);
            img[py * width + px] = MARK;
        }
    }
    if (released != NULL) PyEval_RestoreThread(released);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&bars);
    return result;
}

static PyObject *up_filter(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t height;
    if (!PyArg_ParseTuple(args, "y*w*n", &in, &out, &height)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t rowbytes = height > 0 ? in.len / height : 0;
    if (!check_range("height", height, 1, MAX_SIDE) || !check_items(&in, "rows", height * rowbytes, 1)
        || !check_items(&out, "out", height * (rowbytes + 1), 1))
        goto done;
    PyThreadState *released = release_gil(out.len);
    const uint8_t *src = in.buf;
    uint8_t *dst = out.buf;
    dst[0] = UP_FILTER;
    memcpy(dst + 1, src, rowbytes);
    for (Py_ssize_t r = 1; r < height; r++) {
        const uint8_t *cur = src + r * rowbytes, *prev = cur - rowbytes;
        uint8_t *o = dst + r * (rowbytes + 1);
        o[0] = UP_FILTER;
        o++;
        for (Py_ssize_t k = 0; k < rowbytes; k++) o[k] = (uint8_t)(cur[k] - prev[k]);
    }
    if (released != NULL) PyEval_RestoreThread(released);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

/* 4-bit rows (first pixel in the high nibble) to one palette index a byte: height x width, contiguous. */
static PyObject *unpack4(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t height, width;
    if (!PyArg_ParseTuple(args, "y*w*nn", &in, &out, &height, &width)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t rowbytes = (width + 1) / 2;
    if (!check_range("height", height, 1, MAX_SIDE) || !check_range("width", width, 1, MAX_SIDE)
        || !check_items(&in, "rows", height * rowbytes, 1) || !check_items(&out, "out", height * width, 1))
        goto done;
    PyThreadState *released = release_gil(out.len);
    const uint8_t *src = in.buf;
    uint8_t *dst = out.buf;
    Py_ssize_t pairs = width / 2;
    for (Py_ssize_t r = 0; r < height; r++) {
        const uint8_t *row = src + r * rowbytes;
        uint8_t *o = dst + r * width;
        for (Py_ssize_t k = 0; k < pairs; k++) {
            o[2 * k] = (uint8_t)(row[k] >> 4);
            o[2 * k + 1] = (uint8_t)(row[k] & 15);
        }
        if (width & 1) o[width - 1] = (uint8_t)(row[pairs] >> 4);
    }
    if (released != NULL) PyEval_RestoreThread(released);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

/* Our deflate (RFC 1951): each byte a literal and each run of it after that a match at distance 1, in one
 * block whose Huffman codes are built from the block's symbol counts by one fixed procedure. */
#define MAX_MATCH 258
#define END_OF_BLOCK 256
#define N_LITLEN 286
#define N_DIST 2 /* distance 1 (symbol 0) is the only one used; symbol 1 completes the code */
#define N_CODELEN 19
/* Lengths 3..258: symbol 257 + k, with len_extra[k] extra bits over len_base[k]. */
static const uint16_t len_base[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83,
                                      99, 115, 131, 163, 195, 227, 258};
static const uint8_t len_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint8_t codelen_order[N_CODELEN] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
static uint8_t len_symbol[MAX_MATCH + 1]; /* length -> k, filled by the module init */

typedef struct {
    uint8_t *out;
    uint64_t acc;
    int held;
} BitWriter;

static void put_bits(BitWriter *w, uint32_t value, int count) {
    w->acc |= (uint64_t)value << w->held;
    w->held += count;
    while (w->held >= 8) {
        *w->out++ = (uint8_t)w->acc;
        w->acc >>= 8;
        w->held -= 8;
    }
}

typedef struct {
    uint16_t code[N_LITLEN]; /* bit-reversed: deflate sends Huffman codes first bit first */
    uint8_t bits[N_LITLEN];
} Code;

static int compare_keys(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Huffman code lengths of the `n` symbols with counts `freq`, none longer than `limit`, by one fixed
 * procedure: symbols in order of count, then number; two queues (leaves, then trees in the order built),
 * a leaf taken first on equal weights; counts halved until the longest fits. At least two symbols get a
 * code, so that every code is complete (zlib refuses an incomplete code-length code). */
static void code_lengths(const uint32_t *freq, int n, int limit, uint8_t *bits) {
    int order[N_LITLEN], used = 0;
    uint64_t weight[2 * N_LITLEN];
    int parent[2 * N_LITLEN], depth[2 * N_LITLEN];
    memset(bits, 0, (size_t)n);
    for (int s = 0; s < n; s++)
        if (freq[s]) order[used++] = s;
    for (int s = 0; used < 2 && s < n; s++) /* complete a code of one symbol with the lowest other one */
        if (!freq[s] && (used == 0 || order[0] != s)) order[used++] = s;
    for (int round = 0;; round++) {
        /* (weight, symbol) keys are distinct, so any sort gives this one order */
        uint64_t key[N_LITLEN];
        for (int k = 0; k < used; k++) {
            uint64_t f = freq[order[k]] >> round;
            key[k] = (f ? f : 1) << 16 | (uint64_t)order[k];
        }
        qsort(key, (size_t)used, sizeof(uint64_t), compare_keys);
        for (int k = 0; k < used; k++) {
            weight[k] = key[k] >> 16;
            order[k] = (int)(key[k] & 0xFFFF);
        }
        int leaf = 0, tree = used, built = used;
        while (built < 2 * used - 1) {
            int pick[2];
            for (int k = 0; k < 2; k++)
                pick[k] = (leaf < used && (tree >= built || weight[leaf] <= weight[tree])) ? leaf++ : tree++;
            weight[built] = weight[pick[0]] + weight[pick[1]];
            parent[pick[0]] = parent[pick[1]] = built++;
        }
        int longest = 0;
        depth[built - 1] = 0;
        for (int k = built - 2; k >= 0; k--) {
            depth[k] = depth[parent[k]] + 1;
            if (k < used && depth[k] > longest) longest = depth[k];
        }
        if (longest <= limit) {
            for (int k = 0; k < used; k++) bits[order[k]] = (uint8_t)depth[k];
            return;
        }
    }  /* else again, every count halved once more */
}

static uint16_t reverse_bits(uint16_t code, int bits) {
    uint16_t out = 0;
    for (int k = 0; k < bits; k++) out = (uint16_t)((out << 1) | ((code >> k) & 1));
    return out;
}

/* The canonical codes of code lengths `bits` (RFC 1951 3.2.2). */
static void canonical(const uint8_t *bits, int n, Code *c) {
    uint16_t count[16] = {0}, next[16];
    for (int s = 0; s < n; s++) count[bits[s]]++;
    count[0] = 0;
    uint16_t code = 0;
    for (int b = 1; b < 16; b++) next[b] = code = (uint16_t)((code + count[b - 1]) << 1);
    for (int s = 0; s < n; s++) {
        c->bits[s] = bits[s];
        c->code[s] = bits[s] ? reverse_bits(next[bits[s]]++, bits[s]) : 0;
    }
}

static void put_symbol(BitWriter *w, const Code *c, int s) { put_bits(w, c->code[s], c->bits[s]); }

/* The data as tokens: each byte a literal (0..255), each run of it after that matches at distance 1 of
 * 3..258 bytes (256 + length - 3); counts of their symbols in `litlen`. Returns how many. */
static Py_ssize_t tokenize(const uint8_t *src, Py_ssize_t n, uint16_t *token, uint32_t *litlen) {
    Py_ssize_t i = 0, m = 0;
    while (i < n) {
        uint8_t b = src[i++];
        token[m++] = b;
        litlen[b]++;
        Py_ssize_t j = i;
        uint64_t pattern = b * 0x0101010101010101ULL, word;
        while (j + 8 <= n) {
            memcpy(&word, src + j, 8);
            if (word != pattern) break;
            j += 8;
        }
        while (j < n && src[j] == b) j++;
        int64_t run = j - i;
        while (run >= 3) {
            /* never leave a tail of 1 or 2 after a full match: those would need literals */
            int64_t length = run <= MAX_MATCH ? run : run - MAX_MATCH < 3 ? run - 3 : MAX_MATCH;
            token[m++] = (uint16_t)(256 + length - 3);
            litlen[257 + len_symbol[length]]++;
            run -= length;
        }
        for (; run > 0; run--) {
            token[m++] = b;
            litlen[b]++;
        }
        i = j;
    }
    return m;
}

static void put_tokens(BitWriter *w, const uint16_t *token, Py_ssize_t m, const Code *lit, const Code *dist) {
    for (Py_ssize_t t = 0; t < m; t++) {
        if (token[t] < 256) {
            put_symbol(w, lit, token[t]);
            continue;
        }
        int length = token[t] - 256 + 3, k = len_symbol[length];
        put_symbol(w, lit, 257 + k);
        if (len_extra[k]) put_bits(w, (uint32_t)(length - len_base[k]), len_extra[k]);
        put_symbol(w, dist, 0);
    }
}

/* The run-length coded code lengths (RFC 1951 3.2.7): symbols 0..18, and the extra bits of 16, 17, 18.
 * Returns how many; `count` gets each symbol's count when not NULL. */
static int rle_lengths(const uint8_t *lengths, int total, uint8_t *sym, uint8_t *extra, uint32_t *count) {
    int m = 0;
    for (int i = 0; i < total;) {
        uint8_t cur = lengths[i];
        int run = 1;
        while (i + run < total && lengths[i + run] == cur) run++;
        i += run;
        if (cur == 0) {
            for (; run >= 11; run -= run < 138 ? run : 138) { sym[m] = 18; extra[m++] = (uint8_t)((run < 138 ? run : 138) - 11); }
            if (run >= 3) { sym[m] = 17; extra[m++] = (uint8_t)(run - 3); run = 0; }
        } else {
            sym[m] = cur; extra[m++] = 0;
            run--;
            for (; run >= 3; run -= run < 6 ? run : 6) { sym[m] = 16; extra[m++] = (uint8_t)((run < 6 ? run : 6) - 3); }
        }
        for (; run > 0; run--) { sym[m] = cur; extra[m++] = 0; }
    }
    for (int k = 0; count != NULL && k < m; k++) count[sym[k]]++;
    return m;
}

static Py_ssize_t deflate_runs_into(const uint8_t *src, Py_ssize_t n, uint16_t *token, uint8_t *dst) {
    uint32_t litlen[N_LITLEN] = {0}, dists[N_DIST] = {1, 0}, codelen[N_CODELEN] = {0};
    Py_ssize_t m_tokens = tokenize(src, n, token, litlen);
    litlen[END_OF_BLOCK] = 1;
    uint8_t lengths[N_LITLEN + N_DIST], cl_bits[N_CODELEN], rle_sym[N_LITLEN + N_DIST], rle_extra[N_LITLEN + N_DIST];
    code_lengths(litlen, N_LITLEN, 15, lengths);
    code_lengths(dists, N_DIST, 15, lengths + N_LITLEN);
    int hlit = N_LITLEN;
    while (hlit > 257 && lengths[hlit - 1] == 0) hlit--;
    memmove(lengths + hlit, lengths + N_LITLEN, N_DIST);
    int m = rle_lengths(lengths, hlit + N_DIST, rle_sym, rle_extra, codelen);
    code_lengths(codelen, N_CODELEN, 7, cl_bits);
    int hclen = N_CODELEN;
    while (hclen > 4 && cl_bits[codelen_order[hclen - 1]] == 0) hclen--;
    Code lit, dist, cl;
    canonical(lengths, hlit, &lit);
    canonical(lengths + hlit, N_DIST, &dist);
    canonical(cl_bits, N_CODELEN, &cl);

    BitWriter w = {dst, 0, 0};
    put_bits(&w, 1, 1); /* BFINAL */
    put_bits(&w, 2, 2); /* BTYPE 10: dynamic codes */
    put_bits(&w, (uint32_t)(hlit - 257), 5);
    put_bits(&w, N_DIST - 1, 5);
    put_bits(&w, (uint32_t)(hclen - 4), 4);
    for (int k = 0; k < hclen; k++) put_bits(&w, cl_bits[codelen_order[k]], 3);
    static const uint8_t rle_extra_bits[N_CODELEN] = {[16] = 2, [17] = 3, [18] = 7};
    for (int k = 0; k < m; k++) {
        put_symbol(&w, &cl, rle_sym[k]);
        if (rle_extra_bits[rle_sym[k]]) put_bits(&w, rle_extra[k], rle_extra_bits[rle_sym[k]]);
    }
    put_tokens(&w, token, m_tokens, &lit, &dist);
    put_symbol(&w, &lit, END_OF_BLOCK);
    if (w.held) put_bits(&w, 0, 8 - w.held);
    return w.out - dst;
}

static PyObject *deflate_runs(PyObject *self, PyObject *args) {
    Py_buffer in;
    if (!PyArg_ParseTuple(args, "y*", &in)) return NULL;
    PyObject *result = NULL;
    /* A token costs at most 15 bits a byte (a literal; a match covers 3 bytes with at most 35 bits); the
     * header at most 5 bytes + 19 * 3 bits + 288 codes of 7 + 7 bits. */
    size_t capacity = 2 * (size_t)in.len + 1024;
    uint8_t *dst = PyMem_Malloc(capacity);
    uint16_t *token = PyMem_Malloc(((size_t)in.len + 1) * sizeof(uint16_t)); /* at most one a byte */
    if (dst == NULL || token == NULL) {
        PyErr_NoMemory();
    } else {
        PyThreadState *released = release_gil(in.len);
        Py_ssize_t size = deflate_runs_into(in.buf, in.len, token, dst);
        if (released != NULL) PyEval_RestoreThread(released);
        result = PyBytes_FromStringAndSize((const char *)dst, size);
    }
    PyMem_Free(dst);
    PyMem_Free(token);
    PyBuffer_Release(&in);
    return result;
}

static PyMethodDef methods[] = {
    {"mike", mike, METH_VARARGS, "Draw the mike preset into 4-bit PNG rows."},
    {"jkx", jkx, METH_VARARGS, "Draw a JKX image into 8-bit grayscale rows."},
    {"unpack4", unpack4, METH_VARARGS, "4-bit PNG rows to one palette index a byte."},
    {"up_filter", up_filter, METH_VARARGS, "PNG Up filter of packed rows, each after its filter-type byte."},
    {"deflate_runs", deflate_runs, METH_VARARGS, "A raw deflate stream: fixed codes, runs as distance-1 matches."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", "The drawing engines' pixel loops.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernel(void) {
    for (int k = 0; k < 29; k++)
        for (int length = len_base[k]; length <= MAX_MATCH && (k == 28 || length < len_base[k + 1]); length++)
            len_symbol[length] = (uint8_t)k;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
