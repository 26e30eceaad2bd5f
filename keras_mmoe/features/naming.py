"""Feature names that are valid Keras layer names, SavedModel input names and TF Serving keys."""

import re
from typing import Dict, Iterable

_INVALID = re.compile(r"[^0-9A-Za-z_]+")


def sanitize_feature_name(name: str) -> str:
    """Maps a raw feature name to a valid input / layer name.

    Every run of characters other than ASCII letters, digits and ``_`` (spaces, hyphens,
    apostrophes, ...) becomes one ``_``; leading and trailing ``_`` are dropped; a name that
    would start with a digit gets the prefix ``f_``. Case is kept. The result matches
    ``[A-Za-z][A-Za-z0-9_]*``, which TensorFlow accepts as an op name and TF Serving as an input
    key (``saved_model_cli``, REST and gRPC alike).

    >>> sanitize_feature_name("fill inc questionnaire for veteran's admin")
    'fill_inc_questionnaire_for_veteran_s_admin'
    >>> sanitize_feature_name("migration code-change in msa")
    'migration_code_change_in_msa'
    """
    if not isinstance(name, str):
        raise ValueError(f"A feature name must be a string, received: {name!r}")
    sanitized = _INVALID.sub("_", name).strip("_")
    if not sanitized:
        raise ValueError(f"The feature name {name!r} has no letter or digit to build an input name from")
    if sanitized[0].isdigit():
        sanitized = "f_" + sanitized
    return sanitized


def sanitize_feature_names(names: Iterable[str]) -> Dict[str, str]:
    """Sanitizes ``names``; returns ``{raw name: sanitized name}`` and rejects collisions."""
    mapping = {}
    seen = {}
    for name in names:
        if name in mapping:
            raise ValueError(f"The feature name {name!r} is listed twice")
        sanitized = sanitize_feature_name(name)
        if sanitized in seen:
            raise ValueError(
                f"The feature names {seen[sanitized]!r} and {name!r} both sanitize to {sanitized!r}; rename one"
            )
        seen[sanitized] = name
        mapping[name] = sanitized
    return mapping
