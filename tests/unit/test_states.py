"""Which service states a dependent service can count on."""

from guardian import ServiceState


def test_only_up_counts_for_dependents() -> None:
    assert ServiceState.UP.healthy
    for state in ServiceState:
        if state is not ServiceState.UP:
            # FAILING too: a dependent failing alongside a failing dependency is
            # blocked, not restarted (exim4 hangs on DNS while named is hung)
            assert not state.healthy, state
