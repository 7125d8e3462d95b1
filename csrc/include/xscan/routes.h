// Route kinds and route policies, shared by the CPU engine (csrc/cpu) and the CUDA kernels
// (csrc/cuda), host and device alike. The numbers of Route and Source are xscan/spec.py's (the
// extensions export kRouteNames / kSourceNames and xscan checks them when it loads); the index maths
// is xscan/routes.py's. docs/ops.md ("Adding a route") shows what a new route kind touches.
//
// A policy describes one op's routes over its maps:
//   route.at(k, j)       the token at position j of route k, what is the same for every channel
//                        (modality, token index, pixel);
//   route.source(d, t)   fills what depends on the channel d (u's and y's channel; for a
//                        realignment also u's map and column);
//   length(), tokens()   positions per route, length of the per-token tensors;
//   routes()             the number of routes K the op's tensors carry;
//   u_map(Dm), y_map(Dm) the (channels, rows, columns) of u's and y's pixel maps;
//   modalities()         how many per-modality tensors it reads (1 or 2).
#pragma once

#include <cstdint>

#include "xscan/scan_math.h"

namespace xscan {

enum class Route : int32_t { kLine = 0, kCross = 1, kAtrous = 2, kCrossPair = 3, kHeads = 4, kSnake = 5 };
enum class Source : int32_t { kToken = 0, kChannelColumn = 1, kChannelHalves = 2, kWidthColumn = 3, kWidthHalves = 4 };

struct RouteName {
  const char* name;
  Route value;
};
struct SourceName {
  const char* name;
  Source value;
};
constexpr RouteName kRouteNames[] = {{"LINE", Route::kLine},
                                     {"CROSS", Route::kCross},
                                     {"ATROUS", Route::kAtrous},
                                     {"CROSS_PAIR", Route::kCrossPair},
                                     {"HEADS", Route::kHeads},
                                     {"SNAKE", Route::kSnake}};
constexpr int kRouteKinds = sizeof(kRouteNames) / sizeof(kRouteNames[0]);
constexpr SourceName kSourceNames[] = {{"TOKEN", Source::kToken},
                                       {"CHANNEL_COLUMN", Source::kChannelColumn},
                                       {"CHANNEL_HALVES", Source::kChannelHalves},
                                       {"WIDTH_COLUMN", Source::kWidthColumn},
                                       {"WIDTH_HALVES", Source::kWidthHalves}};
constexpr int kSources = sizeof(kSourceNames) / sizeof(kSourceNames[0]);

struct Token {
  int m;               // modality (0 or 1): which of the per-modality tensors it reads and writes
  int64_t e;           // index along the per-token tensors' last axis
  int64_t uc, ur, uw;  // its pixel in u (channel, row, column)
  int64_t yc, yr, yw;  // where its output goes in y
  bool pad;            // padding: u reads 0, no output
};

struct Extent {
  int64_t channels, rows, cols;
};

XSCAN_HD Token pixel_token(int m, int64_t e, int64_t r, int64_t w) { return Token{m, e, 0, r, w, 0, r, w, false}; }

// u's and y's channel is the scanned channel, and u is read from the token's own modality.
struct SameChannel {
  static constexpr bool kSameChannel = true;
  XSCAN_HD void source(int64_t d, Token& t) const { t.uc = t.yc = d; }
};

// A policy whose u and y are one (Dm, rows, cols) map per modality.
template <typename Self>
struct OnMap : SameChannel {
  XSCAN_HD Extent u_map(int64_t Dm) const { return static_cast<const Self*>(this)->map(Dm); }
  XSCAN_HD Extent y_map(int64_t Dm) const { return static_cast<const Self*>(this)->map(Dm); }
};

// selective_scan: one route along time over a 1 x L map.
struct LineRoutes : OnMap<LineRoutes> {
  static constexpr bool kScalarDecay = false;
  int64_t L;
  XSCAN_HD explicit LineRoutes(int64_t L_) : L(L_) {}
  XSCAN_HD int64_t length() const { return L; }
  XSCAN_HD int64_t tokens() const { return L; }
  XSCAN_HD int64_t routes() const { return 1; }
  XSCAN_HD int modalities() const { return 1; }
  XSCAN_HD Extent map(int64_t Dm) const { return {Dm, 1, L}; }
  XSCAN_HD Token at(int64_t, int64_t j) const { return pixel_token(0, j, 0, j); }
};

// Four routes that each visit every pixel of one H x W map once (Self supplies at(k, j)).
template <typename Self>
struct WholeMapRoutes : OnMap<Self> {
  static constexpr bool kScalarDecay = false;
  int64_t H, W;
  XSCAN_HD WholeMapRoutes(int64_t H_, int64_t W_) : H(H_), W(W_) {}
  XSCAN_HD int64_t length() const { return H * W; }
  XSCAN_HD int64_t tokens() const { return H * W; }
  XSCAN_HD int64_t routes() const { return 4; }
  XSCAN_HD int modalities() const { return 1; }
  XSCAN_HD Extent map(int64_t Dm) const { return {Dm, H, W}; }
};

// SS2D's four cross routes over an H x W map.
struct CrossRoutes : WholeMapRoutes<CrossRoutes> {
  XSCAN_HD CrossRoutes(int64_t H_, int64_t W_) : WholeMapRoutes(H_, W_) {}
  XSCAN_HD Token at(int64_t k, int64_t j) const {
    const int64_t s = cross_route(k, j, H, W);
    return pixel_token(0, s, s / W, s % W);
  }
};

// ES2D: route k walks sub-lattice k of the map padded to even H, W.
struct AtrousRoutes : OnMap<AtrousRoutes> {
  static constexpr bool kScalarDecay = false;
  int64_t H, W, Hq, Wq;
  XSCAN_HD AtrousRoutes(int64_t H_, int64_t W_) : H(H_), W(W_), Hq(atrous_extent(H_)), Wq(atrous_extent(W_)) {}
  XSCAN_HD int64_t length() const { return Hq * Wq; }
  XSCAN_HD int64_t tokens() const { return Hq * Wq; }
  XSCAN_HD int64_t routes() const { return 4; }
  XSCAN_HD int modalities() const { return 1; }
  XSCAN_HD Extent map(int64_t Dm) const { return {Dm, H, W}; }
  XSCAN_HD Token at(int64_t k, int64_t j) const {
    const int64_t q = atrous_route(k, j, Hq, Wq);
    int64_t h, w;
    Token t = pixel_token(0, q, 0, 0);
    t.pad = !atrous_pixel(k, q, H, W, Wq, &h, &w);
    if (!t.pad) t.ur = t.yr = h, t.uw = t.yw = w;
    return t;
  }
};

// cross_ss2d: route k over 2L positions alternating the two modalities.
struct CrossPairRoutes : OnMap<CrossPairRoutes> {
  static constexpr bool kScalarDecay = false;
  int64_t H, W;
  XSCAN_HD CrossPairRoutes(int64_t H_, int64_t W_) : H(H_), W(W_) {}
  XSCAN_HD int64_t length() const { return 2 * H * W; }
  XSCAN_HD int64_t tokens() const { return H * W; }
  XSCAN_HD int64_t routes() const { return 4; }
  XSCAN_HD int modalities() const { return 2; }
  XSCAN_HD Extent map(int64_t Dm) const { return {Dm, H, W}; }
  XSCAN_HD Token at(int64_t k, int64_t p) const {
    const int64_t s = cross_pair_spatial(k, p, H, W);
    return pixel_token(cross_pair_modality(p), s, s / W, s % W);
  }
};

// interleave_ss2d: cross routes over the realigned (Hr, Wr) map; u is read from the map, channel and
// column the realignment takes that pixel from, y is written in the realigned layout. The realigned
// map's dt, B, C and y fill both modality slots, so only u depends on the source map.
struct RealignRoutes {
  static constexpr bool kScalarDecay = false;
  static constexpr bool kSameChannel = false;
  CrossRoutes cross;
  int64_t C, W;  // channels and width of each input map
  Source source_kind;
  XSCAN_HD RealignRoutes(int64_t Hr, int64_t Wr, int64_t C_, int64_t W_, Source s)
      : cross(Hr, Wr), C(C_), W(W_), source_kind(s) {}
  XSCAN_HD int64_t length() const { return cross.length(); }
  XSCAN_HD int64_t tokens() const { return cross.tokens(); }
  XSCAN_HD int64_t routes() const { return 4; }
  XSCAN_HD int modalities() const { return 2; }
  XSCAN_HD Extent u_map(int64_t) const { return {C, cross.H, W}; }
  XSCAN_HD Extent y_map(int64_t Dm) const { return {Dm, cross.H, cross.W}; }
  // the realigned map of two (C, H, W) maps: (2C, H, W) on the channel axis, (C, H, 2W) on the width
  XSCAN_HD bool fits(int64_t Dm) const {
    const bool on_channels = source_kind == Source::kChannelColumn || source_kind == Source::kChannelHalves;
    return on_channels ? (Dm == 2 * C && cross.W == W) : (Dm == C && cross.W == 2 * W);
  }
  XSCAN_HD Token at(int64_t k, int64_t j) const { return cross.at(k, j); }
  XSCAN_HD void source(int64_t d, Token& t) const {
    const RealignSource src = realign_source(static_cast<int32_t>(source_kind), C, W, d, t.yw);
    t.m = src.m, t.uc = src.c, t.uw = src.w, t.yc = d;
  }
};

// ssd_exchange: channel d is a head; its 2P routes are the head's P channels in each direction
// (k < P: modality 0), all over time, sharing dt and a scalar decay exp(dt A) per step.
struct HeadRoutes : OnMap<HeadRoutes> {
  static constexpr bool kScalarDecay = true;
  int64_t P, L;
  XSCAN_HD HeadRoutes(int64_t P_, int64_t L_) : P(P_), L(L_) {}
  XSCAN_HD int64_t length() const { return L; }
  XSCAN_HD int64_t tokens() const { return L; }
  XSCAN_HD int64_t routes() const { return 2 * P; }
  XSCAN_HD int modalities() const { return 2; }
  XSCAN_HD Extent map(int64_t nh) const { return {nh, P, L}; }
  XSCAN_HD Token at(int64_t k, int64_t t) const { return pixel_token(static_cast<int>(k / P), t, k % P, t); }
};

// ss2d(route="snake"): boustrophedon routes over an H x W map (xscan/routes.py, snake_route).
struct SnakeRoutes : WholeMapRoutes<SnakeRoutes> {
  XSCAN_HD SnakeRoutes(int64_t H_, int64_t W_) : WholeMapRoutes(H_, W_) {}
  XSCAN_HD Token at(int64_t k, int64_t j) const {
    const int64_t i = k >= 2 ? H * W - 1 - j : j;
    int64_t h, w;
    if (k % 2 == 0) {
      h = i / W;
      w = h % 2 == 0 ? i % W : W - 1 - i % W;
    } else {
      w = i / H;
      h = w % 2 == 0 ? i % H : H - 1 - i % H;
    }
    return pixel_token(0, h * W + w, h, w);
  }
};

// The sizes each route kind's geometry holds (xscan.spec.Route), 4 with a realigning source.
XSCAN_HD int geometry_sizes(Route route, Source source) {
  if (source != Source::kToken) return 4;
  return route == Route::kLine ? 1 : 2;
}

// Calls f(policy) with the route policy of (route, source, geometry) and returns its result: the one
// place a route kind becomes its policy, for the CPU engine and the CUDA kernels alike.
template <typename F>
XSCAN_HD auto visit_route(Route route, Source source, const int64_t* g, F&& f) {
  switch (route) {
    case Route::kCross:
      if (source != Source::kToken) return f(RealignRoutes(g[0], g[1], g[2], g[3], source));
      return f(CrossRoutes(g[0], g[1]));
    case Route::kAtrous: return f(AtrousRoutes(g[0], g[1]));
    case Route::kCrossPair: return f(CrossPairRoutes(g[0], g[1]));
    case Route::kHeads: return f(HeadRoutes(g[0], g[1]));
    case Route::kSnake: return f(SnakeRoutes(g[0], g[1]));
    case Route::kLine:
    default: return f(LineRoutes(g[0]));
  }
}

}  // namespace xscan
