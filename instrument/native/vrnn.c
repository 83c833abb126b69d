/* VRNN's generation step in C: one frame (prior, z, decoder, feedback, GRU) per call, for one stream.
 *
 * The same arithmetic as training/vrnn.py `Model._generate_frame`. Why it exists: at the thesis' size (vrnn-paper,
 * h = 2000) one frame reads ~25 M weights, more than any cache holds, so the step waits on memory, not arithmetic
 * (measured on a Zen 1 core: reading 25 MB takes ~2.0 ms, the frame's audio lasts 12.5 ms). int8 weights are a
 * quarter of the bytes; the win then depends on streaming them at the memory's pace, which onnxruntime's int8
 * products do not (four separate row streams per product; ~2.5 ms a frame). Here each int8 matrix is stored
 * packed, tile after tile of 4 rows x 16 columns (one 64-byte cache line), so a product is ONE sequential stream
 * with a software prefetch far ahead of it (`neuralinst bench rtf --configs vrnn-paper --weights int8` measures
 * both). Small matrices whose rounding the export judged audible stay float32 (row-major).
 *
 * Each product's input is rounded to int16 once (14 bits of its peak, as the SampleRNN loop does): each 16
 * weights then cost one widen (int8 -> int16), one pairwise multiply-add into int32 and one add.
 * Layers with two inputs (the decoder's [phi_z(z), h], the GRU's [phi_x(x), phi_z(z)]) are stored as two
 * matrices whose products are summed, so no input vector is ever copied into a concatenation.
 * No allocation, no locking, no I/O: the caller owns every buffer (weights, state, workspace).
 * Compiled by instrument/native/build.py; loaded with ctypes by instrument/native/vrnn.py.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#define VN_MAX_LAYERS 8
#define VN_ABI_VERSION 2
#define VN_X_STEPS 8191.f
#define VN_PREFETCH_BYTES 4096 /* how far ahead of the tile in use the next weights are requested (measured) */

typedef struct {
    int rows, cols;        /* the product's logical shape: y[rows] (+)= W[rows][cols] x[cols] */
    int int8;              /* 1: w is packed int8 tiles [rows/4][cols/16][4][16] with scale[rows] (w = q * scale)
                              0: w is float32 row-major [rows][cols] */
    const void *w;
    const float *scale;
    const float *bias;     /* [rows] or NULL */
} vn_linear;

typedef struct {
    int frame, h_dim, z_dim, n_layers;
    float data_mean, data_std, min_std;
    vn_linear prior[VN_MAX_LAYERS], prior_mean, prior_std;     /* phi_prior (ReLU layers) and the prior's head */
    vn_linear phi_z;                                           /* one ReLU layer */
    vn_linear dec_z, dec_h, dec[VN_MAX_LAYERS];                /* phi_dec: layer 0 = dec_z fz + dec_h h, then dec[1..] */
    vn_linear dec_mean, dec_std;
    vn_linear phi_x[VN_MAX_LAYERS];                            /* ReLU layers */
    vn_linear gru_x, gru_z, gru_h;                             /* W_ih split over [fx, fz] (bias in gru_x), W_hh */
} vn_model;

int vn_abi_version(void) { return VN_ABI_VERSION; }

/* The widest vector a product reads or writes, rounded up so that every buffer holds a whole number of tiles. */
static int vn_round16(int n) { return (n + 15) & ~15; }

static int vn_widest(const vn_model *m) {
    int w = m->h_dim > m->frame ? m->h_dim : m->frame;
    const vn_linear *all[] = {&m->prior_mean, &m->prior_std, &m->phi_z, &m->dec_z, &m->dec_h, &m->dec_mean,
                              &m->dec_std, &m->gru_x, &m->gru_z, &m->gru_h};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (all[i]->rows > w) w = all[i]->rows;
        if (all[i]->cols > w) w = all[i]->cols;
    }
    for (int l = 0; l < m->n_layers; l++) {
        const vn_linear *ls[] = {&m->prior[l], &m->dec[l], &m->phi_x[l]};
        for (int k = 0; k < 3; k++) {
            if (ls[k]->rows > w) w = ls[k]->rows;
            if (ls[k]->cols > w) w = ls[k]->cols;
        }
    }
    return vn_round16(w);
}

#define VN_VECTORS 13
/* Floats of workspace one vn_step call needs (VN_VECTORS vectors of the widest width). */
size_t vn_workspace_floats(const vn_model *m) { return VN_VECTORS * (size_t)vn_widest(m); }

/* y = W x (+ b), or y += W x (+ b) with accumulate. Only x[0..cols) is read: an int8 product's input is rounded
 * into its own zero-padded int16 copy, so what a reused buffer holds past cols never counts. */
static void vn_apply(const vn_linear *L, const float *restrict x, float *restrict y, int accumulate) {
    const int rows = L->rows, cols = L->cols;
    const float *b = L->bias;
    if (!L->int8) {
        const float *w = (const float *)L->w;
        for (int r = 0; r < rows; r++) {
            const float *wr = w + (size_t)r * cols;
            float s = 0.f;
            for (int c = 0; c < cols; c++) s += wr[c] * x[c];
            s += b ? b[r] : 0.f;
            y[r] = accumulate ? y[r] + s : s;
        }
        return;
    }
    const int8_t *p = (const int8_t *)L->w;
    const int cp = vn_round16(cols);
    float amax = 0.f;
    for (int c = 0; c < cols; c++) {
        float a = fabsf(x[c]);
        amax = a > amax ? a : amax;
    }
    const float step = amax > 0.f ? amax / VN_X_STEPS : 1.f, inv = 1.f / step;
    int16_t xq[cp] __attribute__((aligned(32)));
    for (int c = 0; c < cols; c++) xq[c] = (int16_t)lrintf(x[c] * inv);
    for (int c = cols; c < cp; c++) xq[c] = 0;
    const int rows4 = rows & ~3;
    int r = 0;
#if defined(__AVX2__) && defined(__FMA__)
    for (; r < rows4; r += 4) {
        __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
        for (int c = 0; c < cp; c += 16, p += 64) {
            _mm_prefetch((const char *)(p + VN_PREFETCH_BYTES), _MM_HINT_NTA);
            __m256i xv = _mm256_load_si256((const __m256i *)(xq + c));
            s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_load_si128((const __m128i *)p)), xv));
            s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_load_si128((const __m128i *)(p + 16))), xv));
            s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_load_si128((const __m128i *)(p + 32))), xv));
            s3 = _mm256_add_epi32(s3, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_load_si128((const __m128i *)(p + 48))), xv));
        }
        __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s0, s1), _mm256_hadd_epi32(s2, s3));
        __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        float t[4];
        _mm_storeu_ps(t, _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(sum), _mm_loadu_ps(L->scale + r)), _mm_set1_ps(step)));
        for (int i = 0; i < 4; i++) {
            float s = t[i] + (b ? b[r + i] : 0.f);
            y[r + i] = accumulate ? y[r + i] + s : s;
        }
    }
#endif
    /* the portable path, and the last rows % 4 (their tile holds zero rows after them) */
    for (; r < rows; r += 4) {
        const int8_t *tile = (const int8_t *)L->w + (size_t)(r / 4) * cp * 4;
        for (int i = 0; i < 4 && r + i < rows; i++) {
            int32_t acc = 0;
            for (int c = 0; c < cp; c += 16)
                for (int k = 0; k < 16; k++) acc += (int32_t)tile[(size_t)c * 4 + i * 16 + k] * xq[c + k];
            float s = (float)acc * L->scale[r + i] * step + (b ? b[r + i] : 0.f);
            y[r + i] = accumulate ? y[r + i] + s : s;
        }
    }
}

static inline void vn_relu(float *v, int n) {
    for (int i = 0; i < n; i++) v[i] = v[i] > 0.f ? v[i] : 0.f;
}

/* torch.nn.functional.softplus (beta 1, threshold 20) + the floor on every predicted sigma */
static inline float vn_sigma(float v, float floor_) { return (v > 20.f ? v : log1pf(expf(v))) + floor_; }

static inline float vn_sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

static inline float vn_clamp1(float v) { return v < -1.f ? -1.f : (v > 1.f ? 1.f : v); }

/* An MLP of ReLU layers: in -> (ping-pong between a and b) -> the returned buffer. */
static float *vn_mlp(const vn_linear *layers, int n, const float *in, float *a, float *b) {
    const float *x = in;
    float *y = a;
    for (int l = 0; l < n; l++) {
        vn_apply(&layers[l], x, y, 0);
        vn_relu(y, layers[l].rows);
        x = y;
        y = y == a ? b : a;
    }
    return (float *)x;
}

/* One frame for one stream.
 *   h            GRU state [h_dim], updated in place
 *   temperature  scales both sampling sigmas (>= 0)
 *   z_offset     [z_dim] added to z;  eps_z [z_dim], eps_x [frame]: standard normal noise
 *   grain        the fraction of the decoder's draw that is heard (0: its mean, 1: the drawn frame)
 *   audio        [frame] output
 *   work         vn_workspace_floats(m) floats, 64-byte aligned
 * Returns 0, or -1 if the model description is unusable. */
int vn_step(const vn_model *m, float *h, float temperature, const float *z_offset, float grain, const float *eps_z,
            const float *eps_x, float *audio, float *work) {
    if (m->n_layers < 1 || m->n_layers > VN_MAX_LAYERS || m->frame < 1 || m->h_dim < 1 || m->z_dim < 1)
        return -1;
    const size_t w = (size_t)vn_widest(m);
    float *v[VN_VECTORS];
    for (int i = 0; i < VN_VECTORS; i++) v[i] = work + i * w;
    float *hp = v[0], *a = v[1], *b = v[2], *c = v[3], *z = v[4], *fz = v[5], *mx = v[6], *sx = v[7], *xin = v[8];
    float *gi = v[9], *gh = v[10], *mp = v[11], *sp = v[12];
    const int H = m->h_dim, Z = m->z_dim, F = m->frame;
    memcpy(hp, h, sizeof(float) * H);

    /* prior p(z | h), and z */
    float *ph = vn_mlp(m->prior, m->n_layers, hp, a, b);
    vn_apply(&m->prior_mean, ph, mp, 0);
    vn_apply(&m->prior_std, ph, sp, 0);
    for (int i = 0; i < Z; i++) z[i] = mp[i] + temperature * vn_sigma(sp[i], m->min_std) * eps_z[i] + z_offset[i];
    vn_apply(&m->phi_z, z, fz, 0);
    vn_relu(fz, m->phi_z.rows);

    /* decoder p(x | z, h) */
    vn_apply(&m->dec_z, fz, a, 0);
    vn_apply(&m->dec_h, hp, a, 1);
    vn_relu(a, m->dec_z.rows);
    float *dh = m->n_layers > 1 ? vn_mlp(m->dec + 1, m->n_layers - 1, a, b, c) : a;
    vn_apply(&m->dec_mean, dh, mx, 0);
    vn_apply(&m->dec_std, dh, sx, 0);

    /* the drawn frame drives the recurrence; the mean plus `grain` of the same draw is played */
    const float mean = m->data_mean, std = m->data_std;
    for (int i = 0; i < F; i++) {
        float noise = temperature * vn_sigma(sx[i], m->min_std) * eps_x[i];
        float drawn = vn_clamp1((mx[i] + noise) * std + mean);
        xin[i] = (drawn - mean) / std;
        audio[i] = vn_clamp1((mx[i] + grain * noise) * std + mean);
    }
    float *fx = vn_mlp(m->phi_x, m->n_layers, xin, a, b);

    /* GRU (torch.nn.GRUCell: gates r, z, n) */
    vn_apply(&m->gru_x, fx, gi, 0);
    vn_apply(&m->gru_z, fz, gi, 1);
    vn_apply(&m->gru_h, hp, gh, 0);
    for (int j = 0; j < H; j++) {
        float r = vn_sigmoid(gi[j] + gh[j]), u = vn_sigmoid(gi[H + j] + gh[H + j]);
        float n = tanhf(gi[2 * H + j] + r * gh[2 * H + j]);
        h[j] = (1.f - u) * n + u * hp[j];
    }
    return 0;
}
