"""When assets update on their own, as automation conditions (evaluated by ``automation_sensor``)."""

import dagster as dg

AC = dg.AutomationCondition

# `mllmdf materialize` publishes its own results; the daemon need not follow its updates.
FROM_CLI = AC.all_new_updates_have_run_tags(tag_values={"defake/source": "cli"})

# A prediction partition runs when it is new (a model or prompt was registered), or when the
# manifest's content changed. A manifest rematerialized with the same content (a CLI run,
# the nightly rescan) has the same data version, so it costs no run.
PREDICTIONS_FOLLOW_MANIFEST = (
    (
        (AC.newly_missing() | AC.any_deps_match(AC.data_version_changed() & ~FROM_CLI)).since_last_handled()
        # Partitions registered while the daemon was down are missing already on its first tick.
        | (AC.missing() & AC.initial_evaluation())
    )
    & ~AC.any_deps_missing()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("new partition, or new manifest content")

# The warehouse follows changed predictions (a changed manifest always reaches it through
# them), once no run is still computing any. Unlike eager(), a missing partition (one that
# failed, or is not evaluated yet) does not hold the others back: the gate lists it as missing.
WAREHOUSE_FOLLOWS_INPUTS = (
    # Data versions hash content: a rerun that found nothing new does not rebuild anything.
    AC.any_deps_match(AC.data_version_changed() & ~FROM_CLI)
    .allow(dg.AssetSelection.assets("predictions"))
    .since_last_handled()
    # A run still computing predictions holds the rebuild back; a finished backfill does not
    # wait for the backfill daemon's next pass (every 30 s) to be marked complete.
    & ~AC.any_deps_match(AC.run_in_progress())
    & ~AC.in_progress()
).with_label("inputs updated and settled")

# Reports and the leaderboard follow the warehouse in the same run (any_deps_updated counts a
# warehouse rebuild requested on the same tick).
FOLLOW_WAREHOUSE = (
    AC.any_deps_updated().since_last_handled() & ~AC.any_deps_in_progress() & ~AC.in_progress()
).with_label("warehouse updated")
