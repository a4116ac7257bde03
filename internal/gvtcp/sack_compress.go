// Copyright 2026 The teredo-go authors. MIT licensed; this file is not part
// of gVisor (see README.md in this directory).

package tcp

// teredo-go patch: SACK compression, the receiver side of a lossy path.
//
// Upstream acknowledges every out-of-order segment at once. After a loss,
// every segment of the window that follows the hole is out of order, so a
// sender sees one ACK per segment for at least a round trip, and gVisor's
// sender walks its whole retransmission queue on each one (SetPipe): at
// 50 ms and 0.5 % loss, with gVisor at both ends and no GRO, ACKs queued
// up to half a second in front of the sender, which then retransmitted
// segments whose ACK was already waiting in that queue and fell into
// retransmission timeouts. Linux has compressed SACKs since 4.18
// (tcp_comp_sack_nr, tcp_comp_sack_delay_ns): after the first three
// duplicate ACKs for a hole, it holds the ACKs of further out-of-order
// segments for at most 1 ms or 5 % of the RTT, and at most 44 of them. The
// one ACK then sent carries the newest SACK blocks, so the sender learns
// the same, a little later and in fewer steps. This file does the same.

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

const (
	// sackCompressMax is how many out-of-order ACKs may be held back
	// (Linux's tcp_comp_sack_nr default).
	sackCompressMax = 44

	// sackCompressDelay is the longest an ACK is held back (Linux's
	// tcp_comp_sack_delay_ns default); it is also at most 5 % of the RTT.
	sackCompressDelay = time.Millisecond

	// sackImmediateDupAcks duplicate ACKs for each RcvNxt always go out at
	// once, so that a sender's fast retransmit (three duplicate ACKs) is
	// not delayed.
	sackImmediateDupAcks = 3
)

// sackCompressor is the receiver's state for SACK compression.
type sackCompressor struct {
	// timer sends the held ACK; it is initialised on first use.
	timer timer

	// held is the number of ACKs held back since the last one sent.
	held int

	// dupAcksFor is the RcvNxt that dupAcks counts duplicate ACKs for.
	dupAcksFor seqnum.Value

	// dupAcks is the number of duplicate ACKs sent for dupAcksFor, up to
	// sackImmediateDupAcks.
	dupAcks int
}

// ackOutOfOrder acknowledges a segment that arrived out of order: at once
// for the first duplicate ACKs of a hole, without SACK, or when the RTT is
// not known yet, else after at most sackCompressDelay together with the
// following ones.
//
// +checklocks:r.ep.mu
func (r *receiver) ackOutOfOrder() {
	c := &r.sackc
	if c.dupAcksFor != r.RcvNxt {
		c.dupAcksFor = r.RcvNxt
		c.dupAcks = 0
	}
	var delay time.Duration
	if r.ep.SACKPermitted && c.dupAcks >= sackImmediateDupAcks && c.held < sackCompressMax {
		delay = r.sackCompressDelay()
	}
	if delay <= 0 {
		if c.dupAcks < sackImmediateDupAcks {
			c.dupAcks++
		}
		c.held = 0
		r.ep.snd.sendAck()
		return
	}
	c.held++
	if c.timer.isUninitialized() {
		c.timer.init(r.ep.stack.Clock(), timerHandler(r.ep, r.sackCompressTimerExpired))
	}
	if !c.timer.enabled() {
		c.timer.enable(delay)
	}
}

// ackedInOrder is called when a segment was consumed in order. If RcvNxt
// moved past the last ACK sent, the ACK that handleSegmentsLocked sends for
// it carries everything the held ones would have.
//
// +checklocks:r.ep.mu
func (r *receiver) ackedInOrder() {
	if r.RcvNxt != r.ep.snd.MaxSentAck {
		r.sackc.held = 0
	}
}

// sackCompressDelay returns how long an out-of-order ACK may be held: 5 %
// of the smaller of the receiver's and the sender's RTT estimates, at most
// sackCompressDelay, zero while neither is known.
//
// +checklocks:r.ep.mu
func (r *receiver) sackCompressDelay() time.Duration {
	r.ep.rcvQueueMu.Lock()
	rtt := r.ep.RcvAutoParams.RTT
	r.ep.rcvQueueMu.Unlock()
	// RTTState is updateRTO's copy of the sender's estimator, written
	// under ep.mu, which the receiver holds.
	if st := r.ep.snd.RTTState; st.SRTTInited && (rtt == 0 || st.SRTT < rtt) {
		rtt = st.SRTT
	}
	return min(sackCompressDelay, rtt/20)
}

// sackCompressTimerExpired sends the held ACK, if one is still held.
//
// +checklocks:r.ep.mu
func (r *receiver) sackCompressTimerExpired() tcpip.Error {
	c := &r.sackc
	if c.timer.isUninitialized() || !c.timer.checkExpiration() {
		return nil
	}
	if c.held > 0 && r.ep.EndpointState().connected() {
		c.held = 0
		r.ep.snd.sendAck()
	}
	return nil
}
