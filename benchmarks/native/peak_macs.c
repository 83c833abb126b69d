/* The core's peak multiply-add rates, measured: what bounds a compute-bound model (WaveGAN) on this CPU.
 *
 *     cc -O2 -march=native benchmarks/native/peak_macs.c -o /tmp/peak_macs && taskset -c 1 /tmp/peak_macs
 *
 * fp32: ten independent chains of 256-bit FMAs (enough to cover the FMA latency), 8 multiply-adds each.
 * int8: what a u8 x s8 product kernel (onnxruntime's on AVX2) does per 32 multiply-adds: vpmaddubsw (u8 x s8 pairs
 * summed into int16), vpmaddwd with ones (into int32), vpaddd; eight independent accumulators.
 * Registers only: no memory traffic, so this is the ceiling no runtime can pass on this core.
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define FMA10(b, c) \
    a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c); a2 = _mm256_fmadd_ps(a2, b, c); \
    a3 = _mm256_fmadd_ps(a3, b, c); a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c); \
    a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c); a8 = _mm256_fmadd_ps(a8, b, c); \
    a9 = _mm256_fmadd_ps(a9, b, c);
#define U8S8(acc, x, w) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones));

int main(int argc, char **argv) {
    const long n = 100000000;
    (void)argv;
    __m256 b = _mm256_set1_ps(0.999999f * (float)argc), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(1.0f), a1 = _mm256_set1_ps(1.1f), a2 = _mm256_set1_ps(1.2f), a3 = _mm256_set1_ps(1.3f),
           a4 = _mm256_set1_ps(1.4f), a5 = _mm256_set1_ps(1.5f), a6 = _mm256_set1_ps(1.6f), a7 = _mm256_set1_ps(1.7f),
           a8 = _mm256_set1_ps(1.8f), a9 = _mm256_set1_ps(1.9f);
    double t = now();
    for (long i = 0; i < n; i++) { FMA10(b, c) }
    double fp32 = n * 80.0 / (now() - t) / 1e9;
    float o[8];
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                                           _mm256_add_ps(a8, a9)));
    _mm256_storeu_ps(o, s);

    const __m256i ones = _mm256_set1_epi16(1), w = _mm256_set1_epi8((char)(-2 * argc));
    __m256i x0 = _mm256_set1_epi8(3), x1 = _mm256_set1_epi8(4), x2 = _mm256_set1_epi8(5), x3 = _mm256_set1_epi8(6);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    t = now();
    for (long i = 0; i < n; i++) {
        U8S8(c0, x0, w) U8S8(c1, x1, w) U8S8(c2, x2, w) U8S8(c3, x3, w)
        U8S8(c4, x0, c3) U8S8(c5, x1, c2) U8S8(c6, x2, c1) U8S8(c7, x3, c0)
    }
    double int8 = n * 8 * 32.0 / (now() - t) / 1e9;
    int oi[8];
    __m256i si = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                                  _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)));
    _mm256_storeu_si256((__m256i *)oi, si);
    printf("fp32 FMA peak: %.1f GMAC/s\nint8 u8s8 peak: %.1f GMAC/s\n(checksums %g %d)\n", fp32, int8, o[0], oi[0]);
    printf("WaveGAN -paper (0.847 GMAC per 1.024 s clip) at these peaks: fp32 %.1fx, int8 %.1fx real time\n",
           fp32 / 0.847 * 1.024, int8 / 0.847 * 1.024);
    return 0;
}
