"""Node-side escrow follow-up: chain events that change what the payment gate may admit."""

from node.escrow.follower import EscrowFollower

__all__ = ["EscrowFollower"]
