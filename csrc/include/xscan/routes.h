// Route kinds and route policies, shared by the CPU engine (csrc/cpu) and the CUDA kernels
// (csrc/cuda), host and device alike. The numbers of Route and Source and every policy's properties
// are xscan/spec.py's (ROUTE_KINDS): the extensions export kRouteNames, kSourceNames and
// route_traits (route_bindings.h) and xscan compares them when it loads; the index maths is
// xscan/routes.py's. docs/ops.md ("Adding a route") shows what a new route kind touches.
//
// Every policy is a template on its index type I and the type D of the sizes it divides by:
// int64_t for both on the CPU; int32_t and FastDivisor (scan_math.h) in the CUDA kernels, whose
// launcher keeps every route length, token count and map size below 2^31, so that locating a
// position costs a multiply-high per division instead of a 64-bit division (a subroutine call).
//
// A policy describes one op's routes over its maps:
//   kName                its name in xscan.spec.ROUTE_KINDS;
//   route.at(k, j)       the token at position j of route k, what is the same for every channel
//                        (modality, token index, pixel);
//   route.source(d, t)   fills what depends on the channel d (u's and y's channel; for a
//                        realignment also u's map and column);
//   length(), tokens()   positions per route, length of the per-token tensors;
//   routes()             the number of routes K the op's tensors carry;
//   u_map(Dm), y_map(Dm) the (channels, rows, columns) of u's and y's pixel maps;
//   modalities()         how many per-modality tensors it reads (1 or 2);
//   kTokenModalities     how many modalities' per-token tensors (dt, B, C) at() reads (1 or 2);
//   token_step(k)        +1 where position j + kPositionsPerToken of route k reads the token after
//                        position j's, in the same modality, -1 where it reads the one before; 0
//                        otherwise (the CUDA kernels load a run of such positions' B and C as
//                        vectors);
//   kTokenRuns           whether token_step is ever nonzero;
//   kPositionsPerToken   2 where a route's positions alternate the two modalities' tokens (each
//                        token is read by two consecutive positions, one per modality), else 1:
//                        then the tokens of one modality step every second position;
//   kScalarDecay         one scalar decay exp(dt A) per (channel, position), shared by the routes
//                        (HEADS: channel d is a head, its routes the head's P channels).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

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
constexpr RouteName kRouteNames[] = {
    {"LINE", Route::kLine},   {"CROSS", Route::kCross}, {"ATROUS", Route::kAtrous}, {"CROSS_PAIR", Route::kCrossPair},
    {"HEADS", Route::kHeads}, {"SNAKE", Route::kSnake},
};
constexpr int kRouteKinds = sizeof(kRouteNames) / sizeof(kRouteNames[0]);
constexpr SourceName kSourceNames[] = {
    {"TOKEN", Source::kToken},
    {"CHANNEL_COLUMN", Source::kChannelColumn},
    {"CHANNEL_HALVES", Source::kChannelHalves},
    {"WIDTH_COLUMN", Source::kWidthColumn},
    {"WIDTH_HALVES", Source::kWidthHalves},
};
constexpr int kSources = sizeof(kSourceNames) / sizeof(kSourceNames[0]);

template <typename I>
struct TokenOf {
  int m;         // modality (0 or 1): which of the per-modality tensors it reads and writes
  I e;           // index along the per-token tensors' last axis
  I uc, ur, uw;  // its pixel in u (channel, row, column)
  I yc, yr, yw;  // where its output goes in y
  bool pad;      // padding: u reads 0, no output
};
using Token = TokenOf<int64_t>;

struct Extent {
  int64_t channels, rows, cols;
};

template <typename I>
XSCAN_HD TokenOf<I> pixel_token(int m, I e, I r, I w) {
  return TokenOf<I>{m, e, 0, r, w, 0, r, w, false};
}

// u's and y's channel is the scanned channel, and u is read from the token's own modality.
template <typename I>
struct SameChannel {
  static constexpr bool kSameChannel = true;
  using Index = I;
  XSCAN_HD void source(I d, TokenOf<I>& t) const { t.uc = t.yc = d; }
};

// A policy whose u and y are one (Dm, rows, cols) map per modality.
template <typename Self, typename I>
struct OnMap : SameChannel<I> {
  XSCAN_HD Extent u_map(int64_t Dm) const { return static_cast<const Self*>(this)->map(Dm); }
  XSCAN_HD Extent y_map(int64_t Dm) const { return static_cast<const Self*>(this)->map(Dm); }
};

// selective_scan: one route along time over a 1 x L map.
template <typename I = int64_t, typename D = I>
struct LineRoutes : OnMap<LineRoutes<I, D>, I> {
  static constexpr const char* kName = "LineRoutes";
  static constexpr bool kScalarDecay = false;
  static constexpr bool kTokenRuns = true;
  static constexpr int kPositionsPerToken = 1;
  static constexpr int kTokenModalities = 1;
  I L;
  XSCAN_HD explicit LineRoutes(int64_t L_) : L(static_cast<I>(L_)) {}
  XSCAN_HD int64_t length() const { return L; }
  XSCAN_HD int64_t tokens() const { return L; }
  XSCAN_HD int64_t routes() const { return 1; }
  XSCAN_HD int modalities() const { return 1; }
  XSCAN_HD Extent map(int64_t Dm) const { return {Dm, 1, L}; }
  XSCAN_HD TokenOf<I> at(I, I j) const { return pixel_token<I>(0, j, 0, j); }
  XSCAN_HD int token_step(I) const { return 1; }
};

// Four routes that each visit every pixel of one H x W map once (Self supplies at(k, j)).
template <typename Self, typename I, typename D>
struct WholeMapRoutes : OnMap<Self, I> {
  static constexpr bool kScalarDecay = false;
  static constexpr int kPositionsPerToken = 1;
  static constexpr int kTokenModalities = 1;
  D H, W;
  XSCAN_HD WholeMapRoutes(int64_t H_, int64_t W_) : H(static_cast<I>(H_)), W(static_cast<I>(W_)) {}
  XSCAN_HD int64_t length() const { return static_cast<int64_t>(H) * W; }
  XSCAN_HD int64_t tokens() const { return static_cast<int64_t>(H) * W; }
  XSCAN_HD int64_t routes() const { return 4; }
  XSCAN_HD int modalities() const { return 1; }
  XSCAN_HD Extent map(int64_t Dm) const { return {Dm, H, W}; }
};

// SS2D's four cross routes over an H x W map.
template <typename I = int64_t, typename D = I>
struct CrossRoutes : WholeMapRoutes<CrossRoutes<I, D>, I, D> {
  static constexpr const char* kName = "CrossRoutes";
  static constexpr bool kTokenRuns = true;
  XSCAN_HD CrossRoutes(int64_t H_, int64_t W_) : WholeMapRoutes<CrossRoutes<I, D>, I, D>(H_, W_) {}
  XSCAN_HD TokenOf<I> at(I k, I j) const {
    const I s = cross_route(k, j, this->H, this->W);
    return pixel_token<I>(0, s, s / this->W, s % this->W);
  }
  XSCAN_HD int token_step(I k) const { return cross_token_step(k); }
};

// ES2D: route k walks sub-lattice k of the map padded to even H, W.
template <typename I = int64_t, typename D = I>
struct AtrousRoutes : OnMap<AtrousRoutes<I, D>, I> {
  static constexpr const char* kName = "AtrousRoutes";
  static constexpr bool kScalarDecay = false;
  static constexpr bool kTokenRuns = true;
  static constexpr int kPositionsPerToken = 1;
  static constexpr int kTokenModalities = 1;
  I H, W;
  D Hq, Wq;
  XSCAN_HD AtrousRoutes(int64_t H_, int64_t W_)
      : H(static_cast<I>(H_)), W(static_cast<I>(W_)), Hq(atrous_extent(H)), Wq(atrous_extent(W)) {}
  XSCAN_HD int64_t length() const { return static_cast<int64_t>(Hq) * Wq; }
  XSCAN_HD int64_t tokens() const { return static_cast<int64_t>(Hq) * Wq; }
  XSCAN_HD int64_t routes() const { return 4; }
  XSCAN_HD int modalities() const { return 1; }
  XSCAN_HD Extent map(int64_t Dm) const { return {Dm, H, W}; }
  XSCAN_HD TokenOf<I> at(I k, I j) const {
    I q, h, w;
    TokenOf<I> t = pixel_token<I>(0, 0, 0, 0);
    t.pad = !atrous_pixel(k, j, H, W, Hq, Wq, &q, &h, &w);
    t.e = q;
    if (!t.pad) t.ur = t.yr = h, t.uw = t.yw = w;
    return t;
  }
  // the row-major routes' token is their position
  XSCAN_HD int token_step(I k) const { return atrous_column_major(k) ? 0 : 1; }
};

// cross_ss2d: route k over 2L positions alternating the two modalities.
template <typename I = int64_t, typename D = I>
struct CrossPairRoutes : OnMap<CrossPairRoutes<I, D>, I> {
  static constexpr const char* kName = "CrossPairRoutes";
  static constexpr bool kScalarDecay = false;
  static constexpr bool kTokenRuns = true;
  static constexpr int kPositionsPerToken = 2;
  static constexpr int kTokenModalities = 2;
  D H, W;
  XSCAN_HD CrossPairRoutes(int64_t H_, int64_t W_) : H(static_cast<I>(H_)), W(static_cast<I>(W_)) {}
  XSCAN_HD int64_t length() const { return 2 * static_cast<int64_t>(H) * W; }
  XSCAN_HD int64_t tokens() const { return static_cast<int64_t>(H) * W; }
  XSCAN_HD int64_t routes() const { return 4; }
  XSCAN_HD int modalities() const { return 2; }
  XSCAN_HD Extent map(int64_t Dm) const { return {Dm, H, W}; }
  XSCAN_HD TokenOf<I> at(I k, I p) const {
    const I s = cross_route<I, D>(k, p >> 1, H, W);
    return pixel_token<I>(cross_pair_modality(p), s, s / W, s % W);
  }
  XSCAN_HD int token_step(I k) const { return cross_token_step(k); }
};

// interleave_ss2d: cross routes over the realigned (Hr, Wr) map; u is read from the map, channel and
// column the realignment takes that pixel from, y is written in the realigned layout. The realigned
// map's dt, B, C and y fill both modality slots, so only u depends on the source map.
template <typename I = int64_t, typename D = I>
struct RealignRoutes {
  static constexpr const char* kName = "RealignRoutes";
  static constexpr bool kScalarDecay = false;
  static constexpr bool kTokenRuns = CrossRoutes<I, D>::kTokenRuns;
  static constexpr int kPositionsPerToken = 1;
  static constexpr int kTokenModalities = 1;  // the realigned map's tokens; only u reads two maps
  static constexpr bool kSameChannel = false;
  using Index = I;
  CrossRoutes<I, D> cross;
  I C, W;  // channels and width of each input map
  bool on_channels;
  D period;  // realign_source's
  XSCAN_HD RealignRoutes(int64_t Hr, int64_t Wr, int64_t C_, int64_t W_, Source s)
      : cross(Hr, Wr), C(static_cast<I>(C_)), W(static_cast<I>(W_)),
        on_channels(realigns_channels(static_cast<int32_t>(s))), period(realign_period(static_cast<int32_t>(s), C, W)) {
  }
  XSCAN_HD int64_t length() const { return cross.length(); }
  XSCAN_HD int64_t tokens() const { return cross.tokens(); }
  XSCAN_HD int64_t routes() const { return 4; }
  XSCAN_HD int modalities() const { return 2; }
  XSCAN_HD Extent u_map(int64_t) const { return {C, cross.H, W}; }
  XSCAN_HD Extent y_map(int64_t Dm) const { return {Dm, cross.H, cross.W}; }
  // the realigned map of two (C, H, W) maps: (2C, H, W) on the channel axis, (C, H, 2W) on the width
  XSCAN_HD bool fits(int64_t Dm) const {
    return on_channels ? (Dm == 2 * static_cast<int64_t>(C) && cross.W == W)
                       : (Dm == C && static_cast<int64_t>(cross.W) == 2 * static_cast<int64_t>(W));
  }
  XSCAN_HD TokenOf<I> at(I k, I j) const { return cross.at(k, j); }
  XSCAN_HD int token_step(I k) const { return cross.token_step(k); }
  XSCAN_HD void source(I d, TokenOf<I>& t) const {
    const RealignSource<I> src = realign_source(on_channels, period, d, t.yw);
    t.m = src.m, t.uc = src.c, t.uw = src.w, t.yc = d;
  }
};

// ssd_exchange: channel d is a head; its 2P routes are the head's P channels in each direction
// (k < P: modality 0), all over time, sharing dt and a scalar decay exp(dt A) per step.
template <typename I = int64_t, typename D = I>
struct HeadRoutes : OnMap<HeadRoutes<I, D>, I> {
  static constexpr const char* kName = "HeadRoutes";
  static constexpr bool kScalarDecay = true;
  static constexpr bool kTokenRuns = true;
  static constexpr int kPositionsPerToken = 1;
  static constexpr int kTokenModalities = 2;
  D P;
  I L;
  XSCAN_HD HeadRoutes(int64_t P_, int64_t L_) : P(static_cast<I>(P_)), L(static_cast<I>(L_)) {}
  XSCAN_HD int64_t length() const { return L; }
  XSCAN_HD int64_t tokens() const { return L; }
  XSCAN_HD int64_t routes() const { return 2 * static_cast<int64_t>(P); }
  XSCAN_HD int modalities() const { return 2; }
  XSCAN_HD Extent map(int64_t nh) const { return {nh, P, L}; }
  XSCAN_HD TokenOf<I> at(I k, I t) const { return pixel_token<I>(static_cast<int>(k / P), t, k % P, t); }
  XSCAN_HD int token_step(I) const { return 1; }
};

// ss2d(route="snake"): boustrophedon routes over an H x W map (xscan/routes.py, snake_route).
template <typename I = int64_t, typename D = I>
struct SnakeRoutes : WholeMapRoutes<SnakeRoutes<I, D>, I, D> {
  static constexpr const char* kName = "SnakeRoutes";
  static constexpr bool kTokenRuns = false;
  XSCAN_HD SnakeRoutes(int64_t H_, int64_t W_) : WholeMapRoutes<SnakeRoutes<I, D>, I, D>(H_, W_) {}
  XSCAN_HD TokenOf<I> at(I k, I j) const {
    const D H = this->H, W = this->W;
    const bool by_columns = k % 2 != 0;
    I h, w;
    grid_cell<I, D>(by_columns, k >= 2 ? H * W - 1 - j : j, H, W, &h, &w);
    // every other line runs backwards
    if (by_columns) {
      if (w % 2) h = H - 1 - h;
    } else if (h % 2) {
      w = W - 1 - w;
    }
    return pixel_token<I>(0, h * W + w, h, w);
  }
  XSCAN_HD int token_step(I) const { return 0; }
};

// The sizes each route kind's geometry holds (xscan.spec.Route), 4 with a realigning source.
XSCAN_HD int geometry_sizes(Route route, Source source) {
  if (source != Source::kToken) return 4;
  return route == Route::kLine ? 1 : 2;
}

// Calls f(policy) with the route policy of (route, source, geometry), index type I, divisor type D,
// and returns its result: the one place a route kind becomes its policy, for the CPU engine and the
// CUDA launchers alike (host code: a static switch, f is instantiated once per policy).
template <typename I = int64_t, typename D = I, typename F>
auto visit_route(Route route, Source source, const int64_t* g, F&& f) {
  // only the cross routes read u through a realignment (xscan.spec.RouteKind.realigned_policy)
  if (source != Source::kToken && route != Route::kCross)
    throw std::invalid_argument("xscan: route kind " + std::to_string(static_cast<int>(route)) +
                                " takes no realigning source");
  switch (route) {
    case Route::kCross:
      if (source != Source::kToken) return f(RealignRoutes<I, D>(g[0], g[1], g[2], g[3], source));
      return f(CrossRoutes<I, D>(g[0], g[1]));
    case Route::kAtrous: return f(AtrousRoutes<I, D>(g[0], g[1]));
    case Route::kCrossPair: return f(CrossPairRoutes<I, D>(g[0], g[1]));
    case Route::kHeads: return f(HeadRoutes<I, D>(g[0], g[1]));
    case Route::kSnake: return f(SnakeRoutes<I, D>(g[0], g[1]));
    case Route::kLine: return f(LineRoutes<I, D>(g[0]));
  }
  // a route kind with no case above (callers check the code's range first): never a silent default
  throw std::invalid_argument("xscan: no route policy for route kind " + std::to_string(static_cast<int>(route)));
}

// What xscan/spec.py's ROUTE_KINDS says of a route kind's policy, as the policy says it: the
// extensions export route_traits and xscan compares the two when it loads them.
struct RouteTraits {
  const char* policy;
  int geometry_sizes;
  int64_t length, tokens, routes;
  int modalities, token_modalities, positions_per_token;
  bool token_runs, scalar_decay;
};

inline RouteTraits route_traits(Route route, Source source, const int64_t* g) {
  return visit_route(route, source, g, [&](const auto& policy) {
    using Policy = std::decay_t<decltype(policy)>;
    RouteTraits t;
    t.policy = Policy::kName;
    t.geometry_sizes = geometry_sizes(route, source);
    t.length = policy.length(), t.tokens = policy.tokens(), t.routes = policy.routes();
    t.modalities = policy.modalities();
    t.token_modalities = Policy::kTokenModalities;
    t.positions_per_token = Policy::kPositionsPerToken;
    t.token_runs = Policy::kTokenRuns;
    t.scalar_decay = Policy::kScalarDecay;
    return t;
  });
}

}  // namespace xscan
