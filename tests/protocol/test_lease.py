"""LeaseView alone: which grant an answer belongs to, and when permission starts and ends (docs/protocol.md §8.1)."""

from __future__ import annotations

from urban_robot.protocol._lease import Grant, LeaseView
from urban_robot.protocol._messages import Renewal


def renewed(view: LeaseView, epoch: int, token: str, at: float, lease: float = 15) -> LeaseView:
    view.take(epoch, token)
    assert view.answer(view.sent(at), Renewal(epoch, lease), at) == "renewed"
    return view


def test_take_returns_the_grant_it_holds() -> None:
    view = LeaseView()
    grant = view.take(1, "t")
    assert grant == view.grant and (grant.epoch, grant.lease_token) == (1, "t")
    assert not view.processing(0)  # a grant is not permission


def test_a_grant_given_again_is_another_grant_for_the_answers() -> None:
    """The same epoch and token pushed twice: a heartbeat sent under the first is not an answer for the second."""
    view = LeaseView()
    view.take(1, "t")
    before = view.sent(0)
    view.take(1, "t")
    assert view.answer(before, Renewal(1, 15), 1) == "ignored" and not view.processing(1)


def test_a_new_epoch_is_not_processing_until_renewed() -> None:
    view = renewed(LeaseView(), 1, "a", at=0)  # until 15
    assert view.processing(5)
    view.take(2, "b")
    assert not view.processing(5)  # the old epoch's renewal grants nothing under the new one
    assert view.answer(view.sent(6), Renewal(2, 15), 7) == "renewed" and view.until == 21


def test_the_same_epoch_granted_again_keeps_its_renewal() -> None:
    """An adopting claim re-takes the epoch it already holds: its permission does not lapse meanwhile."""
    view = renewed(LeaseView(), 1, "a", at=0)
    view.take(1, "a")
    assert view.processing(14.999) and not view.processing(15)


def test_the_shortest_lease_still_renews() -> None:
    view = renewed(LeaseView(), 1, "a", at=0, lease=1)
    assert view.processing(0.999) and not view.processing(1)


def test_the_lease_token_is_not_in_a_repr() -> None:
    assert "secret-token" not in repr(Grant(1, "secret-token", 1))
    assert "secret-token" not in repr(renewed(LeaseView(), 1, "secret-token", at=0))
