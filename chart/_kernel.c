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
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
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

static PyMethodDef methods[] = {
    {"mike", mike, METH_VARARGS, "Draw the mike preset into 4-bit PNG rows."},
    {"jkx", jkx, METH_VARARGS, "Draw a JKX image into 8-bit grayscale rows."},
    {"up_filter", up_filter, METH_VARARGS, "PNG Up filter of packed rows, each after its filter-type byte."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", "The drawing engines' pixel loops.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernel(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
