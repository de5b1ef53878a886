"""Weight cards, the `.json` beside a weight file: read by their fields, never by their prose.

What a model saw in training decides which images may validate it, so it is read from `trained_on`,
`held_out` and `trained_on_tree`, and the card's tree is recognised by the content hash of its train split
(`data_train_sha256`, as rows record it): renaming or moving a data folder changes no answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from calib.core.errors import CalibError
from calib.core.tree import SPLIT, train_sha256

TRAINED_ON_POOL = "calibration_pool"  # the validation split of `calib.core.data.SPLIT` was held out
TRAINED_ON_ALL = "all_train"  # every train image may have been seen (the conservative answer)

# accuracy keys of weight cards and the key that names the data each was measured on
_CARD_ACCURACIES = {"test_accuracy": "test_data", "test_accuracy_lossless_1k": "lossless_test",
                    "test_accuracy_jpeg_10k": "jpeg_test"}


def weight_card(path: Path) -> dict:
    """The `.json` written beside a weight file (how it was trained, its test accuracy), if any."""
    card = Path(path).with_suffix(".json")
    if not card.exists():
        return {}
    try:
        return json.loads(card.read_text())
    except json.JSONDecodeError:
        raise CalibError(f"weight card {card} is not valid JSON") from None


def card_accuracies(card: dict) -> list[tuple[float, str]]:
    """(accuracy, data it was measured on) for every test accuracy a weight card states."""
    return [(float(card[k]), str(card.get(data, k))) for k, data in _CARD_ACCURACIES.items()
            if isinstance(card.get(k), int | float)]


def held_out_field() -> dict:
    """The card's `held_out` for the validation split of `SPLIT`: what training writes and reading requires."""
    return {"split": "validation", "validation_per_class": SPLIT.validation_per_class, "seed": SPLIT.seed}


def trained_on_fields(pool: bool, tree: str, data_train_sha256: str | None) -> dict:
    """The fields a card states what its model saw with: `tree` names the train folder for people (relative, no
    machine's folders); `data_train_sha256` is what reading trusts."""
    fields: dict = {"trained_on": TRAINED_ON_POOL if pool else TRAINED_ON_ALL}
    if pool:
        fields["held_out"] = held_out_field()
    fields["trained_on_tree"] = {"tree": tree}
    if data_train_sha256:
        fields["trained_on_tree"]["data_train_sha256"] = data_train_sha256
    return fields


def _check_value(value: object, where: str) -> None:
    if value not in (TRAINED_ON_ALL, TRAINED_ON_POOL):
        raise CalibError(f"{where} says trained_on {value!r}; expected {TRAINED_ON_ALL!r} or {TRAINED_ON_POOL!r}")


def trained_on(card: dict, data_root: str | Path | None) -> tuple[str, str]:
    """Which train images a model saw, for the CIFAR-10 tree `data_root` (None: the configured one):
    (`TRAINED_ON_POOL` or `TRAINED_ON_ALL`, the reason in one line).

    The calibration pool only when the card says `"trained_on": "calibration_pool"`, its `held_out` is the
    validation split of `SPLIT`, and its `trained_on_tree.data_train_sha256` is this tree's train hash (computed
    only then: it decodes the whole split). No card or no `trained_on` is all of train; an unknown value is an
    error, since a misspelt claim must not pass for either answer.
    """
    value = card.get("trained_on") if card else None
    if value is None:
        return TRAINED_ON_ALL, "card has no trained_on field: all of train assumed"
    _check_value(value, "weight card")
    if value == TRAINED_ON_ALL:
        return TRAINED_ON_ALL, "card: trained_on all_train"
    expected = held_out_field()
    if card.get("held_out") != expected:
        return TRAINED_ON_ALL, (f"card holds out {json.dumps(card.get('held_out'))}, not the validation split of "
                                f"calib.core.data.SPLIT ({json.dumps(expected)}): all of train assumed")
    tree = card.get("trained_on_tree")
    claimed = tree.get("data_train_sha256") if isinstance(tree, dict) else None
    if not isinstance(claimed, str) or not claimed:
        return TRAINED_ON_ALL, ("card gives no trained_on_tree.data_train_sha256, so its held-out split is not "
                                "trusted for this tree: all of train assumed")
    here = train_sha256(Path(data_root) if data_root is not None else None)
    if claimed != here:
        return TRAINED_ON_ALL, (f"card's tree {tree.get('tree', '?')} (train sha256 {claimed[:12]}...) is not this "
                                f"tree (train sha256 {here[:12]}...): all of train assumed")
    return TRAINED_ON_POOL, (f"card: trained_on calibration_pool of this tree (train sha256 {here[:12]}...), the "
                             f"validation split of SPLIT held out")


def weights_trained_on(path: Path | None, data_root: str | Path | None) -> tuple[str, str]:
    """`trained_on` for a weight file's card; `path=None` (weights not known) is all of train."""
    if path is None:
        return TRAINED_ON_ALL, "weights not known (a model file or random weights): all of train assumed"
    card = weight_card(path)
    if not card:
        return TRAINED_ON_ALL, f"no weight card beside {Path(path).name}: all of train assumed"
    if card.get("trained_on") is not None:
        _check_value(card["trained_on"], f"weight card {Path(path).with_suffix('.json')}")
    return trained_on(card, data_root)
