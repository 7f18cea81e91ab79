#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The collectives parallax uses, in one include: agree (the same error on
/// every rank), the sum/mean/scaled all-reduce (ring), broadcast and
/// reduce-scatter, requests, tensors point to point, the bucketer.
///
/// Arithmetic buffers always travel raw (docs/design.md invariant 3); raw MPI
/// is called through the communicator's MPI_Comm only where Boost.MPI has no
/// wrapper (non-blocking all-reduce, reduce-scatter, matched receives).

#include <parallax/core/agree.hpp>
#include <parallax/core/block.hpp>
#include <parallax/core/bucketer.hpp>
#include <parallax/core/collectives.hpp>
#include <parallax/core/p2p.hpp>
#include <parallax/core/request.hpp>
#include <parallax/core/ring.hpp>
