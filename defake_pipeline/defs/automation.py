"""When assets update on their own, as automation conditions (evaluated by ``automation_sensor``)."""

import dagster as dg

AC = dg.AutomationCondition

# A prediction partition runs when it is new (a model or prompt was registered), or when the
# manifest's content changed. A manifest rematerialized with the same content (a CLI run,
# the nightly rescan) has the same data version, so it costs no run.
PREDICTIONS_FOLLOW_MANIFEST = (
    (AC.newly_missing() | AC.any_deps_match(AC.data_version_changed())).since_last_handled()
    & ~AC.any_deps_missing()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("new partition, or new manifest content")

# The warehouse, reports and leaderboard follow any update of their inputs, once no input is
# still being computed. Unlike eager(), a missing prediction partition (one that failed, or
# is not evaluated yet) does not hold back the others: the gate lists it as missing.
FOLLOW_INPUTS = (
    AC.any_deps_updated().since_last_handled() & ~AC.any_deps_in_progress() & ~AC.in_progress()
).with_label("inputs updated")
