// Copyright 2026 The teredo-go authors. MIT licensed; this file is not part
// of gVisor (see README.md in this directory).

package tcp

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// ccRate names the delivery-rate congestion control added by this copy.
//
// Reno and CUBIC halve their window on every loss, so on a path with random
// loss their rate is bounded by the loss rate (Mathis: about
// MSS/RTT·1.22/√p, 0.4 MB/s at 50 ms and 0.5 %) however fast the path is.
// Teredo paths are long UDP paths through NATs where such loss is normal, and
// the kernel TCP that Miredo users get runs BBR, which does not treat loss as
// congestion. This algorithm follows BBR's model (Cardwell et al., "BBR:
// Congestion-Based Congestion Control", ACM Queue 2016): it measures the
// delivery rate once per round trip and the minimum RTT, and sets the window
// from their product, so random loss costs retransmissions but not rate.
//
// It differs from BBR in what gVisor lacks: there is no pacing, so the window
// alone bounds the sending rate (BBR's cwnd-limited mode) and the gain cycle
// of ProbeBW is replaced by a constant window gain of 2, which lets the rate
// grow by itself until a standing queue forms; bandwidth is sampled per round
// rather than per packet.
const ccRate = "rate"

// Model constants, BBR's where BBR has one.
const (
	// rateStartupGain is 2/ln 2, the smallest gain that doubles the
	// delivery rate every round in startup.
	rateStartupGain = 2.885
	// rateProbeGain is BBR's cwnd_gain: one BDP in flight plus one BDP to
	// absorb delayed and stretched ACKs.
	rateProbeGain = 2.0
	// rateBWRounds is the length, in rounds, of the max filter on the
	// delivery rate.
	rateBWRounds = 10
	// rateFullBWGrowth and rateFullBWRounds decide that startup filled the
	// pipe: three rounds without 25 % growth.
	rateFullBWGrowth = 1.25
	rateFullBWRounds = 3
	// rateMinRTTWindow is how long a minimum RTT sample stays valid; after
	// that the window drops to rateMinCwnd for rateProbeRTTTime to measure
	// the path without our own queue.
	rateMinRTTWindow = 10 * time.Second
	rateProbeRTTTime = 200 * time.Millisecond
	rateMinCwnd      = 4
	// A round that retransmits more than rateLossShare of what it sends
	// (and sends at least rateLossMinPackets) while the RTT shows a queue
	// is not random loss but the queue overflowing: a bottleneck buffer
	// shallower than the window's extra BDP, where a model that ignored
	// loss would drop a quarter of its packets. The window is then capped
	// at rateLossBackoff of itself, and the cap grows by an eighth every
	// rateProbeUpRounds clean rounds until it no longer binds (BBRv2's
	// inflight_hi, simplified). The lab's lossiest profile retransmits
	// about 2-3 %.
	rateLossShare = 0.05
	// rateHeavyLossShare is loss no random path loss explains, queue or
	// not (the RTT estimate lags a queue that fills within a round).
	rateHeavyLossShare = 0.15
	rateLossMinPackets = 20
	rateLossBackoff    = 0.7
	rateProbeUpRounds  = 4
)

type rateMode uint8

const (
	rateStartup rateMode = iota
	rateDrain
	rateProbeBW
	rateProbeRTT
)

// rateState is the congestion control state of one sender. All its methods
// run with the endpoint's lock held, like the sender's.
type rateState struct {
	s    *sender
	mode rateMode

	// Delivery accounting: bytes cumulatively acknowledged plus bytes
	// selectively acknowledged, as of the last ACK.
	started    bool
	prevUna    seqnum.Value
	prevSacked seqnum.Size
	delivered  uint64
	carry      uint64 // delivered bytes not yet counted as packets

	// The current round ends when data sent at its start is delivered.
	roundStart     tcpip.MonotonicTime
	roundDelivered uint64
	round          uint64

	bw [rateBWRounds]float64 // bytes per second, one slot per round

	minRTT      time.Duration
	minRTTStamp tcpip.MonotonicTime

	fullBW      float64
	fullBWCount int
	filledPipe  bool

	probeRTTDone tcpip.MonotonicTime
	priorCwnd    int

	// inflightHi caps the window after a round with heavy loss; zero: no
	// cap. cleanRounds counts the rounds since it was set or grown.
	inflightHi  int
	cleanRounds int
	// roundRetransmits is the endpoint's retransmission count at the
	// start of the round.
	roundRetransmits uint64

	// rtoPrior is the window before the last RTO, restored when the sender
	// leaves RTO recovery (see setCwnd).
	rtoPrior int

	// pipe is SetPipe's reusable walker (pipe.go).
	pipe pipeWalker

	// cwnd is the window the model set after the last ACK; recovery exit
	// restores it (leaveRecovery deflates to Ssthresh first).
	cwnd int
}

func newRateCC(s *sender) *rateState {
	return &rateState{s: s, cwnd: s.SndCwnd}
}

// maxBW is the windowed maximum of the per-round delivery rate.
func (r *rateState) maxBW() float64 {
	m := 0.0
	for _, b := range r.bw {
		if b > m {
			m = b
		}
	}
	return m
}

// target is the window, in packets, that the model asks for with gain.
func (r *rateState) target(gain float64) int {
	bw, rtt, mss := r.maxBW(), r.minRTT, r.s.MaxPayloadSize
	if bw == 0 || rtt <= 0 || mss <= 0 {
		// No model yet: let startup grow from the initial window.
		return 2 * InitialCwnd
	}
	t := int(gain * bw * rtt.Seconds() / float64(mss))
	if t < rateMinCwnd {
		t = rateMinCwnd
	}
	return t
}

// onAck runs for every segment the sender processes, in and out of
// recovery: unlike Update, whose caller skips it during fast recovery, a
// rate model must keep measuring while losses are repaired, or a path with
// random loss (always in recovery) would never leave the initial window.
//
// +checklocks:r.s.ep.mu
func (r *rateState) onAck(now tcpip.MonotonicTime, rtt time.Duration) {
	s := r.s
	una, sacked := s.SndUna, s.ep.scoreboard.Sacked()
	if !r.started {
		r.started = true
		r.prevUna, r.prevSacked = una, sacked
		r.roundStart = now
	}
	d := int64(r.prevUna.Size(una)) + int64(sacked) - int64(r.prevSacked)
	if !r.prevUna.LessThanEq(una) || d < 0 {
		// The scoreboard was reset (RTO) or the receiver reneged: resync
		// without counting anything.
		d = 0
	}
	r.prevUna, r.prevSacked = una, sacked
	r.delivered += uint64(d)

	r.updateMinRTT(now, rtt)

	// A round is one minimum RTT: nothing sent at its start can be
	// acknowledged sooner, so the bytes delivered in it are what the path
	// carried in one round trip. (Rounds counted by sequence numbers break
	// down in recovery, where SndNxt stands still while holes are repaired.)
	if r.minRTT > 0 && now.Sub(r.roundStart) >= r.minRTT {
		r.endRound(now)
	}

	r.setCwnd(now, uint64(d))
}

// checkLoss sets, grows or lifts the loss cap after a round that delivered
// got bytes and retransmitted retx segments.
//
// +checklocks:r.s.ep.mu
func (r *rateState) checkLoss(got, retx uint64) {
	mss := uint64(max(r.s.MaxPayloadSize, 1))
	sent := got/mss + retx
	// RTTState is updateRTO's copy of the estimator, read under ep.mu
	// without the estimator's own lock.
	srtt := r.s.RTTState.SRTT
	// Loss with the RTT near its minimum is random loss on the path; loss
	// while a queue has built up (RTT well above the minimum) is the
	// queue overflowing.
	queued := r.minRTT > 0 && srtt > r.minRTT+r.minRTT/4
	share := float64(retx) / float64(max(sent, 1))
	if sent >= rateLossMinPackets && (queued && share > rateLossShare || share > rateHeavyLossShare) {
		// From the window before an RTO, if one just cut it: a cap set
		// from one segment would hold the connection near nothing for
		// many rounds (seen at 150 ms, 2 %: 0.3 MB/s uploads).
		r.inflightHi = max(int(rateLossBackoff*float64(max(r.s.SndCwnd, r.rtoPrior))), rateMinCwnd)
		r.cleanRounds = 0
		return
	}
	if r.inflightHi == 0 {
		return
	}
	if r.cleanRounds++; r.cleanRounds >= rateProbeUpRounds {
		r.cleanRounds = 0
		r.inflightHi += max(r.inflightHi/8, 1)
		if r.inflightHi >= r.target(rateProbeGain) {
			r.inflightHi = 0
		}
	}
}

// +checklocks:r.s.ep.mu
func (r *rateState) updateMinRTT(now tcpip.MonotonicTime, rtt time.Duration) {
	if rtt <= 0 {
		return
	}
	expired := r.minRTT > 0 && now.Sub(r.minRTTStamp) > rateMinRTTWindow
	if r.minRTT == 0 || rtt < r.minRTT || expired {
		r.minRTT, r.minRTTStamp = rtt, now
	}
	if expired && r.mode != rateProbeRTT {
		r.mode = rateProbeRTT
		r.priorCwnd = r.s.SndCwnd
		r.probeRTTDone = tcpip.MonotonicTime{}
	}
}

// +checklocks:r.s.ep.mu
func (r *rateState) endRound(now tcpip.MonotonicTime) {
	elapsed := now.Sub(r.roundStart)
	got := r.delivered - r.roundDelivered
	r.roundStart, r.roundDelivered = now, r.delivered
	total := r.s.ep.stats.SendErrors.Retransmits.Value()
	retx := total - r.roundRetransmits
	r.roundRetransmits = total
	// A round in which the ACK clock stopped (waiting for an RTO) or the
	// application had nothing more to send says nothing about the path's
	// rate: recording it would let a stall shrink the window after it.
	sample := float64(got) / elapsed.Seconds()
	appLimited := r.s.writeNext == nil
	if got == 0 || r.s.state == tcpip.RTORecovery || (appLimited && sample < r.maxBW()) {
		return
	}
	r.round++
	r.bw[r.round%rateBWRounds] = sample
	r.checkLoss(got, retx)

	switch r.mode {
	case rateStartup:
		if bw := r.maxBW(); bw >= r.fullBW*rateFullBWGrowth {
			r.fullBW, r.fullBWCount = bw, 0
		} else if r.fullBWCount++; r.fullBWCount >= rateFullBWRounds {
			r.filledPipe = true
			r.mode = rateDrain
		}
	case rateDrain:
		if r.s.Outstanding <= r.target(1) {
			r.mode = rateProbeBW
		}
	}
}

// setCwnd moves the window towards the model's target, by at most the
// packets just delivered, so that a window cut by an RTO or an idle restart
// grows back at slow-start speed instead of bursting.
//
// +checklocks:r.s.ep.mu
func (r *rateState) setCwnd(now tcpip.MonotonicTime, deliveredBytes uint64) {
	s := r.s
	cwnd := s.SndCwnd
	mss := uint64(max(s.MaxPayloadSize, 1))
	r.carry += deliveredBytes
	acked := int(r.carry / mss)
	r.carry %= mss

	switch r.mode {
	case rateProbeRTT:
		cwnd = rateMinCwnd
		if r.probeRTTDone == (tcpip.MonotonicTime{}) {
			if s.Outstanding <= rateMinCwnd {
				r.probeRTTDone = now.Add(max(rateProbeRTTTime, r.minRTT))
			}
		} else if now.After(r.probeRTTDone) {
			r.minRTTStamp = now
			r.mode = rateProbeBW
			if !r.filledPipe {
				r.mode = rateStartup
			}
			cwnd = max(r.priorCwnd, rateMinCwnd)
		}
	case rateStartup:
		if t := r.target(rateStartupGain); cwnd < t {
			cwnd = min(cwnd+acked, t)
		}
	case rateDrain:
		cwnd = min(cwnd+acked, r.target(1))
	default:
		cwnd = min(cwnd+acked, r.target(rateProbeGain))
	}
	if r.rtoPrior > 0 && s.state != tcpip.RTORecovery {
		// The sender left RTO recovery: the path delivers again, and
		// growing back from one segment at one doubling per round would
		// cost ten rounds (1.5 s at 150 ms). (It leaves RTO recovery
		// when SndUna passes the RTO's SndNxt, but also on entering SACK
		// recovery or Disorder, which can be before the hole is filled.)
		cwnd = max(cwnd, min(r.rtoPrior, r.target(rateProbeGain)))
		r.rtoPrior = 0
	}
	if r.inflightHi > 0 && cwnd > r.inflightHi {
		cwnd = r.inflightHi
	}
	if cwnd < 1 {
		cwnd = 1
	}
	s.SndCwnd = cwnd
	r.cwnd = cwnd
}

// Update implements congestionControl.Update. The window is set in onAck,
// which also runs during recovery.
func (r *rateState) Update(int, time.Duration, tcpip.MonotonicTime) {}

// HandleLossDetected implements congestionControl.HandleLossDetected. Loss is
// not a congestion signal for this model: enterRecovery, which runs next,
// sets the window to Ssthresh+3, so Ssthresh is set to leave it unchanged.
//
// +checklocks:r.s.ep.mu
func (r *rateState) HandleLossDetected() {
	r.s.Ssthresh = max(r.s.SndCwnd-3, 2)
}

// HandleRTOExpired implements congestionControl.HandleRTOExpired. An RTO
// means the ACK clock stopped, so the window restarts from one packet as in
// every TCP; the model is kept, setCwnd grows the window at slow-start speed
// and restores the window from before the RTO when the sender leaves RTO
// recovery.
//
// +checklocks:r.s.ep.mu
func (r *rateState) HandleRTOExpired() {
	r.rtoPrior = max(r.rtoPrior, r.s.SndCwnd, r.cwnd)
	r.s.Ssthresh = max(r.s.SndCwnd-3, 2)
	r.s.SndCwnd = 1
	r.cwnd = 1
}

// PostRecovery implements congestionControl.PostRecovery: leaveRecovery has
// deflated the window to Ssthresh, the model's window is restored.
//
// +checklocks:r.s.ep.mu
func (r *rateState) PostRecovery() {
	r.s.SndCwnd = max(r.cwnd, 1)
}

// lostRetransmission reports whether seg, already retransmitted in this
// recovery, was lost again. RFC 6675 recovery retransmits a segment once and
// then waits for the RTO; on a path with random loss and thousands of
// segments in flight some retransmission is lost every few round trips, and
// each RTO restarts the window from one segment. Following RACK's principle
// (RFC 8985: a segment is lost when one sent later has been delivered), a
// retransmission still unacknowledged a smoothed RTT plus the larger of a
// quarter of it and twice its variance after it was sent, while ACKs for
// later data keep arriving (NextSeg runs on ACKs in recovery), is lost.
// Only the rate congestion control uses it, so Reno and CUBIC keep
// upstream's behaviour.
//
// +checklocks:s.ep.mu
func (s *sender) lostRetransmission(seg *segment, segSeq seqnum.Value) bool {
	if s.ep.cc != ccRate || !s.FastRecovery.Active ||
		seg.xmitCount < 2 || seg.xmitCount > rateMaxRetransmits ||
		s.FastRecovery.HighRxt.LessThan(segSeq) || !segSeq.LessThan(s.ep.scoreboard.maxSACKED) {
		return false
	}
	srtt, rttvar := s.RTTState.SRTT, s.RTTState.RTTVar
	if srtt <= 0 {
		return false
	}
	return s.ep.stack.Clock().NowMonotonic().Sub(seg.xmitTime) > srtt+max(srtt/4, 2*rttvar)
}

// rateMaxRetransmits bounds how often lostRetransmission sends one segment:
// the RTO counts transmissions against the connection's retry limit
// (MaxRetries), and a queue that briefly holds a segment longer than the
// estimate must not spend that budget; beyond it the RTO takes over.
const rateMaxRetransmits = 3

// rateRTO is the retransmission timeout the rate congestion control uses:
// the smoothed RTT plus the larger of four variances and the minimum RTO, as
// Linux computes it, where RFC 6298 (and upstream) floor the sum at the
// minimum. With timestamps on thousands of segments in flight the variance
// shrinks to almost nothing (RFC 7323 appendix G), so on a 150 ms path
// upstream's RTO is 200 ms, 50 ms over the RTT: a retransmission that waits a
// little in a queue fires a spurious RTO, which restarts the window from one
// segment and resends the window. RFC 6298 allows a larger RTO.
func rateRTO(srtt, rttvar, minRTO time.Duration) time.Duration {
	return srtt + max(4*rttvar, minRTO)
}
