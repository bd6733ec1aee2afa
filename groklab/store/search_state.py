"""The SQL of d_crit_search (groklab/search_rounds.py): one planner at a time per search, the searches
that may need a round, and the mark of a search that ended."""

from __future__ import annotations

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from groklab.store.models import Experiment, Run, utcnow
from groklab.store.runs import FINISHED_STATUSES

SEARCH_KIND = "d_crit_search"


def lock_search(session: Session, experiment_id: int) -> None:
    """Hold the experiment's row until the transaction ends, so that the two workers finishing a
    round's last two runs at once cannot both plan the next round.

    PostgreSQL: a row lock. SQLite: this UPDATE takes the database's write lock, which SQLite
    holds until commit, so the second planner reads only after the first one's round is stored.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Experiment.id).where(Experiment.id == experiment_id).with_for_update())
    else:
        session.execute(update(Experiment).where(Experiment.id == experiment_id).values(kind=Experiment.kind))


def searches_between_rounds(session: Session) -> list[int]:
    """Searches that have not ended and have no run left to finish: each may need its next round
    (a worker that died between finishing a round and planning the next left it so)."""
    unfinished = exists().where(Run.experiment_id == Experiment.id, Run.status.not_in(FINISHED_STATUSES))
    query = select(Experiment.id).where(Experiment.kind == SEARCH_KIND, Experiment.search_ended_at.is_(None), ~unfinished)
    return list(session.scalars(query.order_by(Experiment.id)))


def mark_ended(session: Session, experiment_id: int) -> None:
    session.execute(update(Experiment).where(Experiment.id == experiment_id).values(search_ended_at=utcnow()))
