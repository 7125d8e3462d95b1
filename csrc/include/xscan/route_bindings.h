// What both extensions export of the route kinds: the numbers of Route and Source (ROUTE_<NAME>,
// SOURCE_<NAME>) and route_traits, which xscan.spec.check_codes compares with xscan.spec when the
// extension loads.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "xscan/routes.h"

namespace xscan {

inline void export_routes(pybind11::module_& m) {
  for (const auto& r : kRouteNames) m.attr((std::string("ROUTE_") + r.name).c_str()) = static_cast<int>(r.value);
  for (const auto& s : kSourceNames) m.attr((std::string("SOURCE_") + s.name).c_str()) = static_cast<int>(s.value);
  m.def(
      "route_traits",
      [](int route, int source, const std::vector<int64_t>& geometry) {
        if (route < 0 || route >= kRouteKinds || source < 0 || source >= kSources)
          throw std::invalid_argument("route_traits: no route kind " + std::to_string(route) + " or source " +
                                      std::to_string(source));
        const auto r = static_cast<Route>(route);
        const auto s = static_cast<Source>(source);
        if (static_cast<int>(geometry.size()) != geometry_sizes(r, s))
          throw std::invalid_argument("route_traits: route kind " + std::to_string(route) + " takes " +
                                      std::to_string(geometry_sizes(r, s)) + " sizes");
        const RouteTraits t = route_traits(r, s, geometry.data());
        pybind11::dict d;
        d["policy"] = t.policy;
        d["geometry_sizes"] = t.geometry_sizes;
        d["length"] = t.length;
        d["tokens"] = t.tokens;
        d["routes"] = t.routes;
        d["modalities"] = t.modalities;
        d["token_modalities"] = t.token_modalities;
        d["positions_per_token"] = t.positions_per_token;
        d["token_runs"] = t.token_runs;
        d["scalar_decay"] = t.scalar_decay;
        return d;
      },
      "A route kind's policy as routes.h defines it (route, source, geometry) -> {policy, geometry_sizes, "
      "length, tokens, routes, modalities, token_modalities, positions_per_token, token_runs, scalar_decay}");
}

}  // namespace xscan
