"""What a difference in Table 3 says: a difference, equivalent, or inconclusive; and the paper's claims.

A difference's interval (``metrics.RowBootstrap.difference``) is read against a smallest difference that matters,
declared before any interval is seen (``MARGIN``), so that an interval containing 0 is not taken for evidence of
no effect: only one inside ±MARGIN says that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class PaperClaim:
    """One of the paper's six conclusions: adding ``row``'s technique to ``other`` made dev overall ``expects``."""
    claim: str
    row: str
    other: str
    expects: str  # "better", "worse", or "no change"


#: The paper's reading of Table 3 (its section 5), each as the pair of rows that tests it.
PAPER_CLAIMS: tuple[PaperClaim, ...] = (
    PaperClaim("PALs help", "1", "0", "better"),
    PaperClaim("annealed sampling helps", "BP1", "1", "better"),
    PaperClaim("unsupervised SimCSE helps", "3", "BP1", "better"),
    PaperClaim("extra datasets hurt", "4", "3", "worse"),
    PaperClaim("STLR changes nothing", "5", "4", "no change"),
    PaperClaim("the relational layer hurts", "6", "5", "worse"),
)


#: The smallest difference in dev overall that matters, declared before reading any interval: a difference
#: whose interval lies inside ±MARGIN is "equivalent" (no difference that matters), one whose interval excludes
#: 0 is a difference, and anything else is "inconclusive" (the data cannot tell). 0.005 lies just below the
#: paper's smallest claimed effect (STLR, +0.006 overall).
MARGIN = 0.005


#: The mark of each verdict in a Δ cell.
MARKS = {"better": " *", "worse": " *", "equivalent": " ≈", "inconclusive": ""}


def verdict(delta: Mapping[str, Any], margin: float = MARGIN) -> str:
    """What a difference's interval says: better or worse (it excludes 0), equivalent (it lies inside ±``margin``,
    so any difference is smaller than one that matters), or inconclusive (neither: the data cannot tell)."""
    if delta["excludes_zero"]:
        return "better" if delta["difference"] > 0 else "worse"
    if -margin < delta["low"] and delta["high"] < margin:
        return "equivalent"
    return "inconclusive"


def claim_verdict(expects: str, delta: Mapping[str, Any], margin: float = MARGIN) -> str:
    """Whether this table bears a paper claim out: **holds** (the interval is on the claim's side of 0; for "no
    change", inside ±margin), **reversed** (on the other side), **does not hold** (an effect claimed, but the
    interval inside ±margin; or a change where none was claimed), or **inconclusive** (the data cannot tell)."""
    measured = verdict(delta, margin)
    if measured == "inconclusive":
        return measured
    if expects == "no change":
        return "holds" if measured == "equivalent" else f"does not hold ({measured})"
    if measured == "equivalent":
        return "does not hold (equivalent)"
    return "holds" if measured == expects else "reversed"


def verdict_words(table: Mapping[str, Any]) -> str:
    """How the Δ cells and verdicts read, with the table's declared margin."""
    margin = table.get("margin", MARGIN)
    return (f"The smallest difference in overall that matters is declared as {margin:.3f}: a Δ is a difference "
            f"(* better or worse) when its interval excludes 0, **equivalent** (≈) when the interval lies inside "
            f"±{margin:.3f}, and **inconclusive** when neither (the data cannot tell).")


def tests_the_paper(table: Mapping[str, Any]) -> bool:
    """Whether the table's catalogue holds the rows of the paper's claims (table3.yaml does, recipes.yaml not)."""
    ids = {row["id"] for row in table["rows"]}
    return any(claim.row in ids and claim.other in ids for claim in PAPER_CLAIMS)
