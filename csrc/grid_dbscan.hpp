// Exact DBSCAN on a voxel grid, deterministic noise fill, and the small union-find
// helpers used to merge tile-local labels.  Header-only, no Python dependency: the
// pybind11 binding (segment_binding.cpp) only converts arrays.
//
// Points are (i, j, k, S*v) for every voxel (i, j, k) of a 3D field v (C order; the axis
// names do not matter).  For eps < 2 a voxel's eps-neighbourhood can only contain itself and
// its 26 grid neighbours, so DBSCAN is:
//   1. count, for each voxel p, the stencil voxels q (p included) with
//      |p-q|^2 + (S*v_p - S*v_q)^2 <= eps^2            -> core if count >= min_samples;
//   2. union-find over core-core stencil edges within eps;
//   3. attach each non-core voxel to the cluster of its within-eps core neighbour with
//      the smallest linear index (fixed, tile-independent rule), else noise (0).
// Clusters are numbered 1..n in the C order of their first core voxel.
//
// Memory: 7 bytes per voxel besides the input: the int32 output doubles as the union-find
// parent array, a uint8 array holds neighbour counts then core flags, and a uint16 array the
// 13 forward "within eps" bits (distances are computed once).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace gpe {

struct Shape3 {
    int64_t nz, ny, nx;
    int64_t size() const { return nz * ny * nx; }
};

// Forward half of the 26-stencil (positive linear offset), used for symmetric passes.
static const int kForward[13][3] = {
    {0, 0, 1},  {0, 1, -1},  {0, 1, 0},  {0, 1, 1},  {1, -1, -1}, {1, -1, 0}, {1, -1, 1},
    {1, 0, -1}, {1, 0, 0},   {1, 0, 1},  {1, 1, -1}, {1, 1, 0},   {1, 1, 1}};

// Calls f(q, d2) for the in-grid 26 neighbours of (z, y, x) in increasing linear index;
// stops early when f returns true.
template <class F>
inline void for_each_neighbour(const Shape3& s, int64_t z, int64_t y, int64_t x, F&& f) {
    const int64_t sy = s.nx, sz = s.ny * s.nx;
    for (int dz = -1; dz <= 1; ++dz) {
        const int64_t zz = z + dz;
        if (zz < 0 || zz >= s.nz) continue;
        for (int dy = -1; dy <= 1; ++dy) {
            const int64_t yy = y + dy;
            if (yy < 0 || yy >= s.ny) continue;
            for (int dx = -1; dx <= 1; ++dx) {
                const int64_t xx = x + dx;
                if (xx < 0 || xx >= s.nx || (dz == 0 && dy == 0 && dx == 0)) continue;
                if (f(zz * sz + yy * sy + xx, dz * dz + dy * dy + dx * dx)) return;
            }
        }
    }
}

// The distance test of one row of pairs, w[i] = d2 + (S*a[i] - S*b[i])^2 <= eps^2.  The hot
// loop of the kernel: on x86-64 GCC also builds an AVX2 clone, picked at load time (no FMA, so
// the rounding is the plain double arithmetic that sklearn's tree search uses).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GPE_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define GPE_MULTIVERSION
#endif

template <class T>
inline void within_row_impl(const T* __restrict a, const T* __restrict b, uint8_t* __restrict w,
                            int64_t len, double scale, double d2, double eps2) {
    for (int64_t i = 0; i < len; ++i) {
        const double dv = scale * double(a[i]) - scale * double(b[i]);
        w[i] = d2 + dv * dv <= eps2;
    }
}

[[maybe_unused]] GPE_MULTIVERSION static void within_row(const float* a, const float* b, uint8_t* w, int64_t len,
                                        double scale, double d2, double eps2) {
    within_row_impl(a, b, w, len, scale, d2, eps2);
}

[[maybe_unused]] GPE_MULTIVERSION static void within_row(const double* a, const double* b, uint8_t* w, int64_t len,
                                        double scale, double d2, double eps2) {
    within_row_impl(a, b, w, len, scale, d2, eps2);
}

template <class T>
inline bool all_finite(const T* v, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(v[i])) return false;
    return true;
}

// Root of p with path halving over a parent array (root: parent == self); int32 labels or int64 ids.
template <typename I>
inline I uf_root(I* parent, I p) {
    while (parent[p] != p) {
        parent[p] = parent[parent[p]];
        p = parent[p];
    }
    return p;
}

// Exact grid DBSCAN.  labels (out, N int32): 0 noise, 1..n clusters; core (out, N uint8):
// 1 for core voxels.  Returns n.  Requires eps < 2, N < 2^31, finite values.
// Besides the outputs it allocates one uint16 per voxel: bit k = "forward pair k within eps",
// so distances are computed once (in a vectorisable per-row loop) and reused.
template <class T>
int32_t grid_dbscan(const T* v, const Shape3& s, double eps, int min_samples, double scale,
                    int32_t* labels, uint8_t* core) {
    const int64_t n = s.size();
    if (!(eps > 0.0 && eps < 2.0)) throw std::invalid_argument("eps must be in (0, 2)");
    if (n >= INT32_MAX) throw std::length_error("volume too large for one tile (>= 2^31 voxels)");
    const double eps2 = eps * eps;
    const int64_t sy = s.nx, sz = s.ny * s.nx;
    int64_t off[13];
    double d2[13];  // |dx|^2; within eps iff d2 + (S*v_p - S*v_q)^2 <= eps^2, summed in this
                    // order like sklearn's tree search (so boundary cases round the same way)
    for (int k = 0; k < 13; ++k) {
        off[k] = kForward[k][0] * sz + kForward[k][1] * sy + kForward[k][2];
        d2[k] = double(kForward[k][0] * kForward[k][0] + kForward[k][1] * kForward[k][1] +
                       kForward[k][2] * kForward[k][2]);
    }

    // 1. within-eps forward pairs and neighbour counts (the voxel itself counts, as in sklearn).
    std::vector<uint16_t> edges(n, 0);
    std::vector<uint8_t> w(s.nx);
    std::fill(core, core + n, uint8_t(1));
    for (int64_t z = 0; z < s.nz; ++z) {
        for (int64_t y = 0; y < s.ny; ++y) {
            const int64_t row = z * sz + y * sy;
            for (int k = 0; k < 13; ++k) {
                const int* o = kForward[k];
                if (z + o[0] >= s.nz || y + o[1] < 0 || y + o[1] >= s.ny) continue;
                const int64_t x0 = o[2] < 0 ? 1 : 0, x1 = o[2] > 0 ? s.nx - 1 : s.nx;
                const int64_t len = x1 - x0, p0 = row + x0;
                const uint8_t* __restrict ww = w.data();
                within_row(v + p0, v + p0 + off[k], w.data(), len, scale, d2[k], eps2);
                {
                    uint8_t* __restrict cp = core + p0;
                    for (int64_t i = 0; i < len; ++i) cp[i] += ww[i];
                }
                {
                    uint8_t* __restrict cq = core + p0 + off[k];
                    for (int64_t i = 0; i < len; ++i) cq[i] += ww[i];
                }
                uint16_t* __restrict ep = edges.data() + p0;
                for (int64_t i = 0; i < len; ++i) ep[i] |= uint16_t(ww[i]) << k;
            }
        }
    }
    const int ms = std::max(min_samples, 1);
    for (int64_t p = 0; p < n; ++p) core[p] = core[p] >= ms ? 1 : 0;

    // 2. union-find over core-core edges; the root of a set is its smallest index.
    for (int64_t p = 0; p < n; ++p) labels[p] = core[p] ? int32_t(p) : 0;
    for (int64_t p = 0; p < n; ++p) {
        unsigned m = edges[p];
        if (!core[p] || !m) continue;
        int32_t rp = uf_root(labels, int32_t(p));
        while (m) {
            const int k = __builtin_ctz(m);
            m &= m - 1;
            const int64_t q = p + off[k];
            if (!core[q] || labels[q] == rp) continue;
            const int32_t rq = uf_root(labels, int32_t(q));
            if (rq == rp) continue;
            if (rq < rp) {
                labels[rp] = rq;
                rp = rq;
            } else {
                labels[rq] = rp;
            }
        }
    }

    // 3. number clusters in C order of their first (= root) core voxel; a resolved voxel
    //    holds -id.  Roots precede their members, so every parent chain ends at a -id.
    int32_t next = 0;
    for (int64_t p = 0; p < n; ++p) {
        if (!core[p]) continue;
        const int32_t x = labels[p];
        if (x == p) {
            labels[p] = -(++next);
        } else {
            int32_t q = x;
            while (labels[q] >= 0) q = labels[q];
            labels[p] = labels[q];
        }
    }

    // 4. border voxels: the within-eps core neighbour with the smallest linear index.  For
    //    in-grid neighbours linear order is (dz, dy, dx) order: backward pairs first (stored
    //    at the neighbour, largest offset first), then forward pairs.
    for (int64_t p = 0; p < n; ++p) {
        if (core[p]) continue;
        int32_t lab = 0;
        for (int k = 12; k >= 0 && !lab; --k) {
            const int64_t q = p - off[k];
            if (q >= 0 && q < n && ((edges[q] >> k) & 1u) && core[q]) lab = labels[q];
        }
        for (unsigned m = edges[p]; m && !lab; m &= m - 1) {
            const int64_t q = p + off[__builtin_ctz(m)];
            if (core[q]) lab = labels[q];
        }
        labels[p] = lab;  // -id or 0; cores are all negative by now
    }
    for (int64_t p = 0; p < n; ++p) labels[p] = -labels[p];
    return next;
}

// Most frequent positive label among the 26 neighbours of p; ties -> smallest label.
// Returns 0 when no neighbour is labelled.
inline int32_t neighbour_majority(const int32_t* L, const Shape3& s, int64_t p) {
    const int64_t sy = s.nx, sz = s.ny * s.nx;
    const int64_t z = p / sz, y = (p / sy) % s.ny, x = p % sy;
    int32_t buf[26];
    int k = 0;
    for_each_neighbour(s, z, y, x, [&](int64_t q, int) {
        if (L[q] > 0) buf[k++] = L[q];
        return false;
    });
    if (k == 0) return 0;
    std::sort(buf, buf + k);
    int32_t best = buf[0];
    int best_n = 0;
    for (int i = 0; i < k;) {
        int j = i;
        while (j < k && buf[j] == buf[i]) ++j;
        if (j - i > best_n) {  // strict: an equal count keeps the smaller label
            best_n = j - i;
            best = buf[i];
        }
        i = j;
    }
    return best;
}

// Deterministic synchronous (Jacobi) noise fill, in place on L (0 = unlabelled).
// Each step, every unlabelled voxel with a labelled 26-neighbour takes the majority label
// of its labelled neighbours as they were before the step (ties -> smallest label).
// Runs at most max_iter steps (< 0: until nothing changes).  When no voxel is labelled at
// all and all_zero_to_one is set, every voxel becomes 1 (one grain).  Returns the number
// of voxels still unlabelled.  Only the frontier is touched, so cost ~ number filled.
inline int64_t fill_noise(int32_t* L, const Shape3& s, int64_t max_iter, bool all_zero_to_one) {
    const int64_t n = s.size();
    const int64_t sy = s.nx, sz = s.ny * s.nx;
    std::vector<int64_t> front, next;
    std::vector<int32_t> vals;
    bool any_label = false;
    int64_t zeros = 0;
    for (int64_t z = 0; z < s.nz; ++z)
        for (int64_t y = 0; y < s.ny; ++y)
            for (int64_t x = 0; x < s.nx; ++x) {
                const int64_t p = z * sz + y * sy + x;
                if (L[p] > 0) {
                    any_label = true;
                    continue;
                }
                if (L[p] < 0) throw std::invalid_argument("labels must be >= 0");
                ++zeros;
                bool has = false;
                for_each_neighbour(s, z, y, x, [&](int64_t q, int) { return has = L[q] > 0; });
                if (has) front.push_back(p);
            }
    if (!any_label) {
        if (all_zero_to_one) {
            std::fill(L, L + n, int32_t(1));
            return 0;
        }
        return zeros;
    }
    for (int64_t p : front) L[p] = -1;  // -1 = queued (reads as unlabelled)
    for (int64_t it = 0; !front.empty() && (max_iter < 0 || it < max_iter); ++it) {
        vals.resize(front.size());
        for (size_t i = 0; i < front.size(); ++i) vals[i] = neighbour_majority(L, s, front[i]);
        for (size_t i = 0; i < front.size(); ++i) L[front[i]] = vals[i];
        zeros -= int64_t(front.size());
        next.clear();
        for (int64_t p : front) {
            const int64_t z = p / sz, y = (p / sy) % s.ny, x = p % sy;
            for_each_neighbour(s, z, y, x, [&](int64_t q, int) {
                if (L[q] == 0) {
                    L[q] = -1;
                    next.push_back(q);
                }
                return false;
            });
        }
        front.swap(next);
    }
    for (int64_t p : front) L[p] = 0;  // stopped early: un-queue
    return zeros;
}

// ---- union-find over tile-local provisional labels (int64 parents, root = smallest) ----


inline void uf_union_pairs(int64_t* parent, int64_t n, const int64_t* a, const int64_t* b,
                           int64_t m) {
    for (int64_t i = 0; i < m; ++i) {
        if (a[i] < 0 || a[i] >= n || b[i] < 0 || b[i] >= n)
            throw std::out_of_range("union-find label out of range");
        int64_t ra = uf_root(parent, int64_t(a[i])), rb = uf_root(parent, int64_t(b[i]));
        if (ra == rb) continue;
        if (ra < rb) parent[rb] = ra; else parent[ra] = rb;
    }
}

// Replaces every parent by its root (roots are smaller than members, so one pass).
inline void uf_flatten(int64_t* parent, int64_t n) {
    for (int64_t i = 0; i < n; ++i) parent[i] = parent[parent[i]];
}

// For labels 1..nlab: flat index (C order) of the first voxel with that label and mask
// set (-1 if none), and the number of voxels with that label (mask ignored).
inline void label_first_and_count(const int32_t* labels, const uint8_t* mask, int64_t n,
                                  int64_t nlab, int64_t* first, int64_t* count) {
    std::fill(first, first + nlab + 1, int64_t(-1));
    std::fill(count, count + nlab + 1, int64_t(0));
    for (int64_t p = 0; p < n; ++p) {
        const int32_t l = labels[p];
        if (l <= 0) continue;
        if (l > nlab) throw std::out_of_range("label larger than nlab");
        ++count[l];
        if (first[l] < 0 && mask[p]) first[l] = p;
    }
}

}  // namespace gpe
