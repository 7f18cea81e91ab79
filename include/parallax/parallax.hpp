#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The umbrella header: includes every public parallax header.

#include <parallax/version.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/comm.hpp>
