package main

import (
	"github.com/teredo-go/teredo/relay"
	"github.com/teredo-go/teredo/relay/tun"
)

// The TUN device offers the relay every optional interface: batched reads,
// batched (coalesced) writes, and its counters for /status and /metrics.
var (
	_ relay.BatchDevice    = (*tun.Device)(nil)
	_ relay.BatchWriter    = (*tun.Device)(nil)
	_ relay.CountingDevice = (*tun.Device)(nil)
)
