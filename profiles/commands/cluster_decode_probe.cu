// Decode attention in one launch for small steps (Hopper): a probe for issue 14 (`cluster_decode_probe.py`).
//
// Session 16's cluster kernel (profiles/runs/s16_gpu, commit 3afd818), reworked where its timings pointed:
// - every key of a CTA is asked for at once (STAGES = its tiles + 1), not one tile ahead of the math: at 2k context a
//   CTA's 128-256 keys were two to four memory round trips in a row there (~2 us a tile at 32k);
// - launched with programmatic dependent launch (the probe's launcher), as the Triton kernels are;
// - PRE: the sequence lookup and the block-table reads before `griddepcontrol.wait` (nothing the launch before writes);
// - switches that take work out, to see what each part costs: MATH 0 (no attention math: the tiles are read into
//   shared memory and one value a thread is summed), MERGE 0 (no cluster merge: each CTA writes its own partial);
// - STAMPS: thread 0 of each CTA writes %globaltimer at eight points into `stamps` (ns).
// A thread-block cluster of C CTAs owns one (query block, KV head); each CTA copies an equal share of the sequence's
// keys into shared memory (cp.async, 16 bytes a copy, gathered through the block table), runs an online softmax on
// tensor cores (mma.sync m16n8k16: the 16 rows are the block's tokens x the G query heads of the KV head), and the
// cluster merges its C partial results through distributed shared memory.
// Template parameters: C (CTAs a cluster), G (query heads a KV head, a power of two <= 16), BS (tokens a cache block).
// Head size 128, bf16 q / cache / output, int64 metadata.

typedef unsigned short bf16_t;
typedef long long i64;

#define HEAD 128
#define ROW (HEAD + 8)  // shared-memory row stride (elements): 272 B, conflict-free ldmatrix
#ifndef STAGES
#define STAGES 3
#endif
#ifndef WARPS
#define WARPS 4  // each warp takes 16 keys of a tile
#endif
#ifndef MATH
#define MATH 1
#endif
#ifndef MERGE
#define MERGE 1
#endif
#ifndef PRE
#define PRE 1
#endif
#ifndef STAMPS
#define STAMPS 0
#endif
#ifndef WMERGE
#define WMERGE 1  // 0 (with MATH 0): no merge of the warps' partials; warp 0's stands for the CTA's
#endif
#ifndef LOAD
#define LOAD 1  // 0: no K/V copies (launch, metadata, q and the merges only)
#endif
#ifndef MINB
#define MINB 1  // CTAs an SM (launch bounds)
#endif
#define TILE (16 * WARPS)
#define STAGE_ELEMS (2 * TILE * ROW)  // K then V
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ i64 now_ns() {
    i64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

#if STAMPS
#define STAMP(i) \
    if (tid == 0) stamps[cta * 8 + (i)] = now_ns();
#else
#define STAMP(i)
#endif

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// d += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate
__device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float ld_cluster(unsigned local, unsigned rank) {
    unsigned remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

__device__ __forceinline__ float shfl_max4(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}

__device__ __forceinline__ float shfl_sum4(float x) {
    x += __shfl_xor_sync(0xffffffff, x, 1);
    return x + __shfl_xor_sync(0xffffffff, x, 2);
}

#define COPIES (TILE * HEAD / 8 / (WARPS * 32))  // 16-byte copies per thread per tile, for K and for V each

// Tile t's keys as this thread copies them: the cache row (slot * hk + kv_head) of each of its COPIES keys.
// Keys past kv_hi take the last key (finite data; the softmax masks them).
template <int BS>
__device__ __forceinline__ void tile_rows(unsigned (&rows)[COPIES], int t, int tid, const i64* table, int kv_lo,
                                          int kv_hi, int hk, int kv_head) {
#pragma unroll
    for (int i = 0; i < COPIES; ++i) {
        const int key = min(kv_lo + t * TILE + (tid + i * WARPS * 32) / (HEAD / 8), kv_hi - 1);
        rows[i] = (unsigned)((table[key / BS] * BS + key % BS) * hk + kv_head);  // < 2^32 cache rows
    }
}

// Every thread asks for its share of tile t (16-byte copies of K and V rows) and closes a commit group; t past
// the last tile commits an empty group, so the group count stays one per tile.
__device__ __forceinline__ void copy_tile(const unsigned (&rows)[COPIES], int t, int n_tiles, int tid, bf16_t* stages,
                                          const bf16_t* k_cache, const bf16_t* v_cache) {
    if (LOAD && t < n_tiles) {
        bf16_t* ks = stages + (t % STAGES) * STAGE_ELEMS;
#pragma unroll
        for (int i = 0; i < COPIES; ++i) {
            const int idx = tid + i * WARPS * 32, j = idx / (HEAD / 8), c = idx % (HEAD / 8) * 8;
            const i64 off = (i64)rows[i] * HEAD + c;
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(ks + j * ROW + c)),
                         "l"(k_cache + off) : "memory");
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(ks + (TILE + j) * ROW + c)),
                         "l"(v_cache + off) : "memory");
        }
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int C, int G, int BS>
__global__ void __cluster_dims__(C, 1, 1) __launch_bounds__(WARPS * 32, MINB)
cluster_decode(bf16_t* __restrict__ out, const bf16_t* __restrict__ q, const bf16_t* __restrict__ k_cache,
               const bf16_t* __restrict__ v_cache, const i64* __restrict__ block_tables,
               const i64* __restrict__ seq_lens, const i64* __restrict__ query_start_loc, int num_seqs,
               int stride_bt, int stride_qt, int hk, float scale_log2, i64* __restrict__ stamps) {
    constexpr int BQ = 16 / G;  // query tokens a block: BQ x G = 16 rows
    extern __shared__ __align__(128) unsigned char smem[];
    bf16_t* stages = reinterpret_cast<bf16_t*>(smem);

    const int rank = blockIdx.x, kv_head = blockIdx.y, q_block = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
#if STAMPS
    const int cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
#endif
    STAMP(0)
#if !PRE
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    // The sequence that owns query block q_block: blocks of sequence i start at qsl[i] / BQ + i.
    int lo = 0, hi = num_seqs;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (query_start_loc[mid] / BQ + mid <= q_block) lo = mid + 1; else hi = mid;
    }
    const int seq = lo - 1;
    const i64 q_start = query_start_loc[seq];
    const int q_len = (int)(query_start_loc[seq + 1] - q_start);
    const int local_block = q_block - (int)(q_start / BQ + seq);
    if (local_block * BQ >= q_len) return;  // NOTE: the same for every CTA of the cluster
    const int seq_len = (int)seq_lens[seq];
    const int last_tok = min(q_len, (local_block + 1) * BQ) - 1;
    const int kv_end = seq_len - q_len + last_tok + 1;  // keys the block's last query sees
    const int per = ((kv_end + C - 1) / C + TILE - 1) / TILE * TILE;
    const int kv_lo = rank * per, kv_hi = min(kv_end, kv_lo + per);
    const int n_tiles = kv_hi > kv_lo ? (kv_hi - kv_lo + TILE - 1) / TILE : 0;
    const i64* table = block_tables + (i64)seq * stride_bt;

    unsigned rows[STAGES - 1][COPIES];
#pragma unroll
    for (int t = 0; t < STAGES - 1; ++t)
        if (t < n_tiles) tile_rows<BS>(rows[t], t, tid, table, kv_lo, kv_hi, hk, kv_head);
    STAMP(1)
#if PRE
    asm volatile("griddepcontrol.wait;" ::: "memory");  // q and this step's K/V come from the launch before
#endif
    STAMP(2)
#pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) copy_tile(rows[t], t, n_tiles, tid, stages, k_cache, v_cache);
    unsigned next[COPIES];  // the rows of the next tile to copy
    if (STAGES - 1 < n_tiles) tile_rows<BS>(next, STAGES - 1, tid, table, kv_lo, kv_hi, hk, kv_head);

    // This lane's two rows of the 16 (mma fragment rows g and g + 8): token and head, query position.
    const int g = lane >> 2, t4 = lane & 3;
    int q_pos[2];
    unsigned qa[8][4];  // Q as the A operand, 8 k-steps of 16 dims
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = g + 8 * h, tok = local_block * BQ + row / G;
        const bool ok = row < BQ * G && tok < q_len;
        q_pos[h] = ok ? seq_len - q_len + tok : -1;  // -1: the row sees no key
        const unsigned* qrow = reinterpret_cast<const unsigned*>(
            q + (q_start + (ok ? tok : 0)) * stride_qt + (kv_head * G + row % G) * HEAD);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            qa[j][h] = ok ? qrow[(16 * j + 2 * t4) / 2] : 0u;
            qa[j][2 + h] = ok ? qrow[(16 * j + 8 + 2 * t4) / 2] : 0u;
        }
    }
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    float acc[16][4];
#pragma unroll
    for (int n = 0; n < 16; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    for (int t = 0; t < n_tiles; ++t) {
        // refill the stage tile t - 1 used (every warp left it at the barrier that ended the last iteration)
        copy_tile(next, t + STAGES - 1, n_tiles, tid, stages, k_cache, v_cache);
        if (t + STAGES < n_tiles) tile_rows<BS>(next, t + STAGES, tid, table, kv_lo, kv_hi, hk, kv_head);
        asm volatile("cp.async.wait_group %0;" ::"n"(STAGES - 1) : "memory");  // this thread's copies of tile t
        __syncthreads();                                                       // and every other thread's
        if (t == 0) {
            STAMP(3)
        }
        const bf16_t* ks = stages + (t % STAGES) * STAGE_ELEMS + (16 * warp) * ROW;
        const bf16_t* vs = ks + TILE * ROW;
#if MATH
        float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int jj = 0; jj < 4; ++jj)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                unsigned b[4];
                ldmatrix_x4(b, smem_addr(ks + (8 * nt + (lane & 7)) * ROW + 32 * jj + 8 * (lane >> 3)));
                mma(s[nt], qa[2 * jj], b[0], b[1]);
                mma(s[nt], qa[2 * jj + 1], b[2], b[3]);
            }
        // online softmax in base 2 over this warp's 16 keys
        const int key0 = kv_lo + t * TILE + 16 * warp + 2 * t4;
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int key = key0 + 8 * nt + (i & 1), h = i >> 1;
                s[nt][i] = (key < kv_hi && key <= q_pos[h]) ? s[nt][i] * scale_log2 : NEG_INF;
                mx[h] = fmaxf(mx[h], s[nt][i]);
            }
        float alpha[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float m_new = fmaxf(m[h], shfl_max4(mx[h]));
            const float m_safe = m_new == NEG_INF ? 0.f : m_new;
            alpha[h] = exp2f(m[h] - m_safe);
            m[h] = m_new;
            mx[h] = m_safe;
        }
        float rs[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                s[nt][i] = exp2f(s[nt][i] - mx[i >> 1]);
                rs[i >> 1] += s[nt][i];
            }
        l[0] = l[0] * alpha[0] + rs[0];
        l[1] = l[1] * alpha[1] + rs[1];
#pragma unroll
        for (int n = 0; n < 16; ++n) {
            acc[n][0] *= alpha[0]; acc[n][1] *= alpha[0];
            acc[n][2] *= alpha[1]; acc[n][3] *= alpha[1];
        }
        // P as the A operand (16 rows x 16 keys): the S fragments of the two 8-key tiles, repacked
        const unsigned pa[4] = {pack_bf16(s[0][0], s[0][1]), pack_bf16(s[0][2], s[0][3]),
                                pack_bf16(s[1][0], s[1][1]), pack_bf16(s[1][2], s[1][3])};
#pragma unroll
        for (int p = 0; p < 8; ++p) {
            unsigned b[4];
            const int mtx = lane >> 3;
            ldmatrix_x4_trans(b, smem_addr(vs + (8 * (mtx & 1) + (lane & 7)) * ROW + 16 * p + 8 * (mtx >> 1)));
            mma(acc[2 * p], pa, b[0], b[1]);
            mma(acc[2 * p + 1], pa, b[2], b[3]);
        }
#else
        // no math: one K and one V value a thread, so the copies are used
        const float kv = __uint_as_float((unsigned)ks[lane * 4] << 16) + __uint_as_float((unsigned)vs[lane * 4] << 16);
        acc[0][0] += kv + (float)(qa[0][0] & 1u);
        m[0] = m[1] = 0.f;
        l[0] = l[1] = 1.f;
#endif
        __syncthreads();  // every warp is done with this stage
    }
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    STAMP(4)

    // Merge the warps in shared memory (the stages are free now): per warp 16 rows of (m, l, acc[128]).
    float* w_acc = reinterpret_cast<float*>(smem);  // [WARPS][16][HEAD]
    float* w_ml = w_acc + WARPS * 16 * HEAD;         // [WARPS][16][2]
    float* c_acc = w_ml + WARPS * 16 * 2;            // [16][HEAD]: this CTA's partial, read
    float* c_ml = c_acc + 16 * HEAD;                 // [16][2]       by the whole cluster
#if WMERGE
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = g + 8 * h;
        const float l_row = shfl_sum4(l[h]);
        if (t4 == 0) {
            w_ml[(warp * 16 + row) * 2] = m[h];
            w_ml[(warp * 16 + row) * 2 + 1] = l_row;
        }
#pragma unroll
        for (int n = 0; n < 16; ++n) {
            float* dst = w_acc + (warp * 16 + row) * HEAD + 8 * n + 2 * t4;
            dst[0] = acc[n][2 * h];
            dst[1] = acc[n][2 * h + 1];
        }
    }
    __syncthreads();
    for (int idx = tid; idx < 16 * HEAD; idx += WARPS * 32) {
        const int row = idx / HEAD;
        float mw[WARPS], top = NEG_INF;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) top = fmaxf(top, mw[w] = w_ml[(w * 16 + row) * 2]);
        const float safe = top == NEG_INF ? 0.f : top;
        float a = 0.f, den = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            const float sc = exp2f(mw[w] - safe);
            a += w_acc[(w * 16 + row) * HEAD + idx % HEAD] * sc;
            den += w_ml[(w * 16 + row) * 2 + 1] * sc;
        }
        c_acc[idx] = a;
        if (idx % HEAD == 0) {
            c_ml[row * 2] = top;
            c_ml[row * 2 + 1] = den;
        }
    }
#else
    __syncthreads();  // every warp is done with the stages
    if (warp == 0) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = g + 8 * h;
            if (t4 == 0) {
                c_ml[row * 2] = m[h];
                c_ml[row * 2 + 1] = l[h];
            }
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                c_acc[row * HEAD + 8 * n + 2 * t4] = acc[n][2 * h];
                c_acc[row * HEAD + 8 * n + 2 * t4 + 1] = acc[n][2 * h + 1];
            }
        }
    }
#endif
    STAMP(5)
#if MERGE
    cluster_sync();  // every CTA's partial is in its shared memory
#else
    __syncthreads();
#endif
    STAMP(6)

    // Each CTA merges (16 x HEAD) / C outputs across the cluster (MERGE 0: its own partial only) and writes them.
    constexpr int PER_CTA = 16 * HEAD / C;
    for (int idx = rank * PER_CTA + tid; idx < (rank + 1) * PER_CTA; idx += WARPS * 32) {
        const int row = idx / HEAD, d = idx % HEAD, tok = local_block * BQ + row / G;
        if (row >= BQ * G || tok >= q_len) continue;
#if MERGE
        float mr[C], top = NEG_INF;
#pragma unroll
        for (int r = 0; r < C; ++r) top = fmaxf(top, mr[r] = ld_cluster(smem_addr(c_ml + row * 2), r));
        const float safe = top == NEG_INF ? 0.f : top;
        float num = 0.f, den = 0.f;
#pragma unroll
        for (int r = 0; r < C; ++r) {
            const float sc = exp2f(mr[r] - safe);
            num += ld_cluster(smem_addr(c_acc + row * HEAD + d), r) * sc;
            den += ld_cluster(smem_addr(c_ml + row * 2 + 1), r) * sc;
        }
#else
        const float num = c_acc[row * HEAD + d], den = c_ml[row * 2 + 1];
#endif
        const float o = den > 0.f ? num / den : 0.f;
        const unsigned bits = pack_bf16(o, 0.f);
        out[(q_start + tok) * (i64)(hk * G * HEAD) + (kv_head * G + row % G) * HEAD + d] = (bf16_t)(bits & 0xffff);
    }
#if MERGE
    cluster_sync();  // no CTA leaves while another still reads its shared memory
#endif
    STAMP(7)
}
