/* SampleRNN's generation loop in C: one top-tier frame (every tier, every sample, sampling included) per call.
 *
 * The same arithmetic as training/samplernn.py `Model.step`, arranged for one CPU core (WaveRNN/LPCNet style):
 *   - the sample-level input conv over embeddings is a table lookup: tables[k][level] = conv tap k (embedding),
 *     so the first MLP layer costs frame_size row additions instead of a (frame_size x embedding) product;
 *   - every other layer is a matrix-vector product over row-major float32 weights that stay in cache;
 *   - sampling is inverse-CDF on exp(logits / T - max) with the caller's uniform number, as in the torch graph.
 * Optionally (half = 1) the matrices are stored as IEEE float16 and widened to float32 as they are read (F16C on
 * x86): half the bytes to stream from cache per sample, the same float32 arithmetic. The weights must then already
 * be float16 values in the torch model (training/samplernn.py Model.round_weights_to_half_) for the two to agree.
 * Or (int8 = 1) they are int8 with one float32 scale per row (w = q * scale[row]), widened as they are read:
 * a quarter of the bytes. The tier-0 upsampling and GRU matrices (5.5 MB in float32 at dim 256) are read every
 * 16 samples and the sample-level MLP's (0.5 MB) every sample; in float32 they do not stay in a 512 KB L2 / shared
 * L3, so the loop waits on memory (measured ~1.2 multiply-adds per cycle on a Zen 1 core, a seventh of its peak).
 * No allocation, no locking, no I/O: the caller owns every buffer (weights, state, workspace).
 * Compiled by instrument/native/build.py; loaded with ctypes by instrument/native/samplernn.py.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if (defined(__F16C__) || defined(__AVX2__)) && defined(__FMA__)
#include <immintrin.h>
#endif

#define SRNN_MAX_TIERS 8
#define SRNN_MAX_LAYERS 8
#define SRNN_MAX_HIDDEN 8
#define SRNN_ABI_VERSION 3

typedef struct {
    int n_tiers, n_rnn, dim, q, n_hidden, lstm, skip;
    int frame_size[SRNN_MAX_TIERS];      /* bottom-up, as in the config */
    int n_frame_samples[SRNN_MAX_TIERS]; /* samples each tier reads per frame */
    const float *expand_w[SRNN_MAX_TIERS], *expand_b[SRNN_MAX_TIERS];        /* [dim][nfs], [dim] */
    const float *w_ih[SRNN_MAX_TIERS][SRNN_MAX_LAYERS];                      /* [gates*dim][dim] */
    const float *b_ih[SRNN_MAX_TIERS][SRNN_MAX_LAYERS];                      /* [gates*dim] */
    const float *w_hh[SRNN_MAX_TIERS][SRNN_MAX_LAYERS];
    const float *b_hh[SRNN_MAX_TIERS][SRNN_MAX_LAYERS];
    const float *skip_w[SRNN_MAX_TIERS][SRNN_MAX_LAYERS];                    /* [dim][dim] (skip only) */
    const float *skip_b[SRNN_MAX_TIERS];                                     /* [dim] (skip only) */
    const float *up_w[SRNN_MAX_TIERS], *up_b[SRNN_MAX_TIERS];                /* [fs][dim][dim], [fs][dim] */
    const float *tables;                                                     /* [fs0][q][dim] */
    const float *hid_w[SRNN_MAX_HIDDEN], *hid_b[SRNN_MAX_HIDDEN];            /* [dim][dim], [dim] */
    const float *out_w, *out_b;                                              /* [q][dim], [q] */
    const float *dequant;                                                    /* [q]: level -> audio */
    const float *frame_in;                                                   /* [q]: level -> frame-tier input */
    int half; /* 1: w_ih, w_hh, skip_w, up_w, hid_w and out_w point to float16 (uint16) data */
    int int8; /* 1: they point to int8 data, and each has a per-row float32 scale below */
    const float *w_ih_s[SRNN_MAX_TIERS][SRNN_MAX_LAYERS], *w_hh_s[SRNN_MAX_TIERS][SRNN_MAX_LAYERS];
    const float *skip_w_s[SRNN_MAX_TIERS][SRNN_MAX_LAYERS], *up_w_s[SRNN_MAX_TIERS];  /* up: [fs][dim] */
    const float *hid_w_s[SRNN_MAX_HIDDEN], *out_w_s;
} srnn_model;

int srnn_abi_version(void) { return SRNN_ABI_VERSION; }

/* Floats of workspace one srnn_frame call needs. */
size_t srnn_workspace_floats(const srnn_model *m) {
    size_t d = (size_t)m->dim, up = 0;
    for (int i = 0; i < m->n_tiers; i++) up += (size_t)m->frame_size[i] * d;
    int top = m->n_frame_samples[m->n_tiers - 1];
    return up + 3 * d /* x, y, acc */ + 8 * d /* gi, gh */ + 2 * d + (size_t)m->q + 2 * (size_t)top + 64;
}

static inline void matvec(const float *restrict w, const float *restrict x, const float *restrict b,
                          float *restrict y, int rows, int cols) {
    /* Four rows at a time so each load of x feeds four FMAs chains; -ffast-math lets the compiler vectorise. */
    int r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *w0 = w + (size_t)r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        for (int c = 0; c < cols; c++) {
            float xc = x[c];
            s0 += w0[c] * xc; s1 += w1[c] * xc; s2 += w2[c] * xc; s3 += w3[c] * xc;
        }
        y[r] = s0 + (b ? b[r] : 0.f); y[r + 1] = s1 + (b ? b[r + 1] : 0.f);
        y[r + 2] = s2 + (b ? b[r + 2] : 0.f); y[r + 3] = s3 + (b ? b[r + 3] : 0.f);
    }
    for (; r < rows; r++) {
        const float *wr = w + (size_t)r * cols;
        float s = 0.f;
        for (int c = 0; c < cols; c++) s += wr[c] * x[c];
        y[r] = s + (b ? b[r] : 0.f);
    }
}

static inline float half_to_float(uint16_t h) {
    /* exact IEEE binary16 -> binary32 (the portable path; x86 uses F16C below) */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400u));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | man << 13;
    else bits = sign | (exp + 127 - 15) << 23 | man << 13;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void matvec_half(const uint16_t *restrict w, const float *restrict x, const float *restrict b,
                        float *restrict y, int rows, int cols) {
    int r = 0;
#if defined(__F16C__) && defined(__FMA__)
    if (cols % 8 == 0) {
        for (; r + 4 <= rows; r += 4) {
            const uint16_t *w0 = w + (size_t)r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
                   s3 = _mm256_setzero_ps();
            for (int c = 0; c < cols; c += 8) {
                __m256 xv = _mm256_loadu_ps(x + c);
                s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w0 + c))), xv, s0);
                s1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w1 + c))), xv, s1);
                s2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w2 + c))), xv, s2);
                s3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w3 + c))), xv, s3);
            }
            float t[4][8];
            _mm256_storeu_ps(t[0], s0); _mm256_storeu_ps(t[1], s1);
            _mm256_storeu_ps(t[2], s2); _mm256_storeu_ps(t[3], s3);
            for (int i = 0; i < 4; i++) {
                float s = 0.f;
                for (int k = 0; k < 8; k++) s += t[i][k];
                y[r + i] = s + (b ? b[r + i] : 0.f);
            }
        }
    }
#endif
    for (; r < rows; r++) {
        const uint16_t *wr = w + (size_t)r * cols;
        float s = 0.f;
        for (int c = 0; c < cols; c++) s += half_to_float(wr[c]) * x[c];
        y[r] = s + (b ? b[r] : 0.f);
    }
}

/* int8 weights: x is quantised to int16 once per call (14 bits: |x| <= 8191 * step, so 2048-wide rows cannot
 * overflow the int32 sums), then each 16 weights cost one widen (int8 -> int16), one multiply-add of pairs into
 * int32 and one add, where the float path needs two widens, two conversions and two FMAs. The 14-bit step
 * (max|x| / 8191) adds a relative error ~6e-5 of the vector's peak, far below the weights' own int8 step. */
#define SRNN_X_STEPS 8191.f
static void matvec_i8(const int8_t *restrict w, const float *restrict scale, const float *restrict x,
                      const float *restrict b, float *restrict y, int rows, int cols) {
    int r = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if (cols % 16 == 0 && cols <= 8192) {
        int16_t xq[cols] __attribute__((aligned(32)));
        __m256 vmax = _mm256_setzero_ps();
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        for (int c = 0; c < cols; c += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + c), absmask));
        float t8[8], amax = 0.f;
        _mm256_storeu_ps(t8, vmax);
        for (int k = 0; k < 8; k++) amax = t8[k] > amax ? t8[k] : amax;
        const float step = amax > 0.f ? amax / SRNN_X_STEPS : 1.f;
        const __m256 inv = _mm256_set1_ps(1.f / step);
        for (int c = 0; c < cols; c += 16) {
            __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c), inv));
            __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c + 8), inv));
            /* packs works per 128-bit lane (lo0-3 hi0-3 lo4-7 hi4-7): the permute restores the order */
            _mm256_store_si256((__m256i *)(xq + c), _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8));
        }
        for (; r + 4 <= rows; r += 4) {
            const int8_t *w0 = w + (size_t)r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
            __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256(), s2 = _mm256_setzero_si256(),
                    s3 = _mm256_setzero_si256();
            for (int c = 0; c < cols; c += 16) {
                __m256i xv = _mm256_load_si256((const __m256i *)(xq + c));
                s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w0 + c))), xv));
                s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w1 + c))), xv));
                s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w2 + c))), xv));
                s3 = _mm256_add_epi32(s3, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w3 + c))), xv));
            }
            /* horizontal sums of the four accumulators at once */
            __m256i h01 = _mm256_hadd_epi32(s0, s1), h23 = _mm256_hadd_epi32(s2, s3);
            __m256i h = _mm256_hadd_epi32(h01, h23); /* per lane: s0 s1 s2 s3 partials */
            __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            __m128 f = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(sum), _mm_loadu_ps(scale + r)), _mm_set1_ps(step));
            if (b) f = _mm_add_ps(f, _mm_loadu_ps(b + r));
            _mm_storeu_ps(y + r, f);
        }
    }
#endif
    for (; r < rows; r++) {
        const int8_t *wr = w + (size_t)r * cols;
        float s = 0.f;
        for (int c = 0; c < cols; c++) s += (float)wr[c] * x[c];
        y[r] = s * scale[r] + (b ? b[r] : 0.f);
    }
}

/* y = W x + b with W in the model's storage type (`scale`: its per-row scales when int8) */
static inline void mv(const srnn_model *m, const float *w, const float *scale, const float *x, const float *b,
                      float *y, int rows, int cols) {
    if (m->int8) matvec_i8((const int8_t *)(const void *)w, scale, x, b, y, rows, cols);
    else if (m->half) matvec_half((const uint16_t *)(const void *)w, x, b, y, rows, cols);
    else matvec(w, x, b, y, rows, cols);
}

static inline float sigmoidf(float v) { return 1.f / (1.f + expf(-v)); }

typedef struct {
    const srnn_model *m;
    float *h, *c;           /* state: [n_tiers][n_rnn][dim] each (c only for LSTM) */
    int *hist;              /* levels, oldest first: [L + top] */
    int n;                  /* samples in hist */
    const float *noise;     /* [top] */
    const int *forced;      /* [top] or NULL: teacher forcing */
    float inv_t;
    float *up[SRNN_MAX_TIERS];
    float *x, *y, *acc, *gi, *gh, *a, *b, *logits;
    float *logits_out;      /* [top][q] or NULL */
    int t;                  /* samples produced this call */
    int *levels_out;
} run_ctx;

static void sample_level(run_ctx *r, const float *cond) {
    const srnn_model *m = r->m;
    const int d = m->dim, q = m->q, fs0 = m->frame_size[0];
    float *a = r->a, *b = r->b;
    memcpy(a, cond, sizeof(float) * d);
    const int *prev = r->hist + r->n - fs0;
    for (int k = 0; k < fs0; k++) {
        const float *row = m->tables + ((size_t)k * q + prev[k]) * d;
        for (int j = 0; j < d; j++) a[j] += row[j];
    }
    for (int j = 0; j < d; j++) a[j] = a[j] > 0.f ? a[j] : 0.f;
    for (int l = 0; l < m->n_hidden; l++) {
        mv(m, m->hid_w[l], m->hid_w_s[l], a, m->hid_b[l], b, d, d);
        for (int j = 0; j < d; j++) a[j] = b[j] > 0.f ? b[j] : 0.f;
    }
    float *lg = r->logits;
    mv(m, m->out_w, m->out_w_s, a, m->out_b, lg, q, d);
    if (r->logits_out) memcpy(r->logits_out + (size_t)r->t * q, lg, sizeof(float) * q);
    int level;
    if (r->forced) {
        level = r->forced[r->t];
        level = level < 0 ? 0 : (level >= q ? q - 1 : level);
    } else {
        float mx = -INFINITY;
        for (int k = 0; k < q; k++) { lg[k] *= r->inv_t; mx = lg[k] > mx ? lg[k] : mx; }
        float total = 0.f;
        for (int k = 0; k < q; k++) { total += expf(lg[k] - mx); lg[k] = total; } /* unnormalised CDF */
        float thr = r->noise[r->t] * total;
        level = 0;
        while (level < q - 1 && lg[level] < thr) level++;
    }
    r->levels_out[r->t] = level;
    r->hist[r->n++] = level;
    r->t++;
}

static void run_tier(run_ctx *r, int i, const float *cond) {
    const srnn_model *m = r->m;
    const int d = m->dim, nfs = m->n_frame_samples[i], fs = m->frame_size[i];
    const int gates = m->lstm ? 4 : 3;
    float *x = r->x, *gi = r->gi, *gh = r->gh, *acc = r->acc;
    /* input expansion of the last nfs samples (+ conditioning from above) */
    const int *prev = r->hist + r->n - nfs;
    for (int j = 0; j < d; j++) {
        const float *w = m->expand_w[i] + (size_t)j * nfs;
        float s = 0.f;
        for (int k = 0; k < nfs; k++) s += w[k] * m->frame_in[prev[k]];
        x[j] = s + m->expand_b[i][j] + (cond ? cond[j] : 0.f);
    }
    if (m->skip) memcpy(acc, m->skip_b[i], sizeof(float) * d);
    for (int l = 0; l < m->n_rnn; l++) {
        float *h = r->h + ((size_t)i * m->n_rnn + l) * d;
        mv(m, m->w_ih[i][l], m->w_ih_s[i][l], x, m->b_ih[i][l], gi, gates * d, d);
        mv(m, m->w_hh[i][l], m->w_hh_s[i][l], h, m->b_hh[i][l], gh, gates * d, d);
        if (m->lstm) {
            float *c = r->c + ((size_t)i * m->n_rnn + l) * d;
            for (int j = 0; j < d; j++) {
                float ig = sigmoidf(gi[j] + gh[j]), fg = sigmoidf(gi[d + j] + gh[d + j]);
                float gg = tanhf(gi[2 * d + j] + gh[2 * d + j]), og = sigmoidf(gi[3 * d + j] + gh[3 * d + j]);
                c[j] = fg * c[j] + ig * gg;
                h[j] = og * tanhf(c[j]);
            }
        } else {
            for (int j = 0; j < d; j++) {
                float rg = sigmoidf(gi[j] + gh[j]), zg = sigmoidf(gi[d + j] + gh[d + j]);
                float ng = tanhf(gi[2 * d + j] + rg * gh[2 * d + j]);
                h[j] = (1.f - zg) * ng + zg * h[j];
            }
        }
        if (m->skip) {
            mv(m, m->skip_w[i][l], m->skip_w_s[i][l], h, NULL, r->y, d, d);
            for (int j = 0; j < d; j++) acc[j] += r->y[j];
        }
        memcpy(x, h, sizeof(float) * d);
    }
    const float *out = m->skip ? acc : x;
    float *up = r->up[i];
    const size_t elem = m->int8 ? sizeof(int8_t) : m->half ? sizeof(uint16_t) : sizeof(float);
    for (int k = 0; k < fs; k++) {
        const float *w = (const float *)(const void *)((const char *)m->up_w[i] + (size_t)k * d * d * elem);
        const float *sc = m->int8 ? m->up_w_s[i] + (size_t)k * d : NULL;
        mv(m, w, sc, out, m->up_b[i] + (size_t)k * d, up + (size_t)k * d, d, d);
    }
    for (int k = 0; k < fs; k++) {
        if (i > 0) run_tier(r, i - 1, up + (size_t)k * d);
        else sample_level(r, up + (size_t)k * d);
    }
}

/* One top-tier frame for one stream.
 *   h, c      RNN state [n_tiers][n_rnn][dim] (c: LSTM only, else NULL), updated in place
 *   samples   the last L = top-frame levels (float, as in the ONNX state), updated in place
 *   noise     [top] uniform numbers; temperature > 0
 *   forced    NULL to sample, or [top] levels to teacher-force (then logits_out [top][q] receives the logits)
 *   audio     [top] output (dequantised), levels [top] output
 *   work      srnn_workspace_floats(m) floats
 * Returns 0, or -1 if the model description is unusable. */
int srnn_frame(const srnn_model *m, float *h, float *c, float *samples, const float *noise, float temperature,
               const int *forced, float *logits_out, float *audio, int *levels, float *work) {
    if (m->n_tiers < 1 || m->n_tiers > SRNN_MAX_TIERS || m->n_rnn < 1 || m->n_rnn > SRNN_MAX_LAYERS ||
        m->n_hidden < 0 || m->n_hidden > SRNN_MAX_HIDDEN || m->dim < 1 || m->q < 2)
        return -1;
    const int d = m->dim, top = m->n_frame_samples[m->n_tiers - 1];
    run_ctx r;
    memset(&r, 0, sizeof r);
    r.m = m; r.h = h; r.c = c; r.noise = noise; r.forced = forced; r.logits_out = logits_out;
    r.levels_out = levels;
    r.inv_t = 1.f / (temperature > 1e-3f ? temperature : 1e-3f);
    float *p = work;
    for (int i = 0; i < m->n_tiers; i++) { r.up[i] = p; p += (size_t)m->frame_size[i] * d; }
    r.x = p; p += d; r.y = p; p += d; r.acc = p; p += d;
    r.gi = p; p += 4 * d; r.gh = p; p += 4 * d; r.a = p; p += d; r.b = p; p += d;
    r.logits = p; p += m->q;
    r.hist = (int *)p; /* 2 * top ints fit in 2 * top floats */
    for (int k = 0; k < top; k++) { /* a state from outside is clamped: a bad level must never index memory */
        float v = samples[k];
        r.hist[k] = v >= 0.f ? (v <= (float)(m->q - 1) ? (int)v : m->q - 1) : 0;
    }
    r.n = top;
    run_tier(&r, m->n_tiers - 1, NULL);
    for (int k = 0; k < top; k++) {
        samples[k] = (float)r.hist[top + k];
        audio[k] = m->dequant[levels[k]];
    }
    return 0;
}
