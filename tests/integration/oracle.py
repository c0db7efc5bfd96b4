"""The independent computation of the canonical value features lives in the package
(``stream.tools.oracle``, also used by ``segmenter soak``); re-exported for the tests."""

from stream.tools.oracle import expected_value_features, feature_mismatches, recount

__all__ = ["expected_value_features", "feature_mismatches", "recount"]
