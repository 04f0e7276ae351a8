"""`--resume`: replaying the interrupted run's journal into a new governor.

What the journal holds and how it is read is `journal.py`; where the
resumed run works and which options it takes over is `service_setup.py`.
Here the replay itself: refuse it when an unended job cannot run with this
run's resources (before anything is submitted: it would end FAILED, for
good), cut the journal's torn ends (only now that the resume goes ahead),
then submit and remove in the journal's order, each job with the final
states it had already reached.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import structlog

from qcg.pilotjob.api.errors import InvalidJobDescriptionError
from qcg.pilotjob.governor import journal as journal_mod

if TYPE_CHECKING:
    from qcg.pilotjob.governor.governor import Governor

log = structlog.get_logger("resume")


def replay_journal(governor: "Governor", journal: journal_mod.Journal, aux_dir: str,
                   replay: journal_mod.Replay) -> bool:
    """Replay `replay` into `governor`; False, with the reason on stderr, when the resume is refused."""
    for note in replay.notes:
        log.warning("journal: not everything is resumed", note=note)
    too_big = {d.name: why for d in replay.unended() if (why := governor.admission.never_fits(d))}
    if too_big:
        for name, why in too_big.items():
            print(f"Error: --resume: job '{name}' cannot run with this run's resources: {why}", file=sys.stderr)
        print("Error: --resume refused: resume with resources like the interrupted run's (--nodes, or an "
              "allocation as large); no file of the run was changed", file=sys.stderr)
        log.error("resume refused: jobs do not fit the resources", jobs=too_big)
        return False
    try:
        # what the resumed run appends must follow whole records
        journal_mod.cut_torn_ends(aux_dir, replay)
    except OSError as exc:
        print(f"Error: --resume: the journal in '{aux_dir}' cannot be repaired: {exc.strerror}", file=sys.stderr)
        return False
    with journal.replaying():
        for step in replay.steps:
            if isinstance(step, journal_mod.Removal):
                governor.remove(step.names)
                continue
            try:
                governor.submit(step.descs, rcnt=step.rcnt, when=step.when, done=step.done)
            except InvalidJobDescriptionError as exc:
                # the journal replays what was accepted, in order: only a damaged or edited one gets here
                print(f"Error: --resume: submission #{step.rcnt} of the journal not replayed: {exc}",
                      file=sys.stderr)
                log.error("journal submission not replayed", rcnt=step.rcnt, problems=exc.problems)
    # later submissions never reuse a request counter of the journal (states are keyed by it)
    governor.rcnt = max(governor.rcnt, replay.last_rcnt)
    log.info("resumed", submissions=len(replay.submissions), unfinished_jobs=governor.unfinished)
    return True
