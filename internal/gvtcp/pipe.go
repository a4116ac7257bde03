// Copyright 2026 The teredo-go authors. MIT licensed; this file is not part
// of gVisor (see README.md in this directory).

package tcp

import (
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// pipeWalker answers SACKScoreboard.IsSACKED and IsRangeLost for ranges
// visited in increasing sequence order, in amortised constant time, from one
// ordered copy of the scoreboard's blocks.
//
// SetPipe asks both questions for every MSS of the window on every ACK
// during recovery, each a search of the scoreboard's btree: with a window of
// thousands of segments on a long lossy path, that was over half of
// teredo-socks's CPU in an upload (perf, lab WAN benchmark at 50 ms 0.5 %),
// and the connection's rate was bound by it. Walking the write list and the
// blocks side by side gives the same answers.
type pipeWalker struct {
	blocks  []header.SACKBlock
	total   seqnum.Size // bytes in all blocks
	before  seqnum.Size // bytes in blocks[:next]
	next    int         // first block that ends after the last range's start
	lostMin seqnum.Size // SACKed bytes above a range that make it lost
}

// reset loads sb's blocks, reusing w's storage.
func (w *pipeWalker) reset(sb *SACKScoreboard) {
	w.blocks = w.blocks[:0]
	w.total, w.before, w.next = 0, 0, 0
	sb.ranges.Ascend(func(b header.SACKBlock) bool {
		w.blocks = append(w.blocks, b)
		w.total += b.Start.Size(b.End)
		return true
	})
	w.lostMin = seqnum.Size((nDupAckThreshold - 1) * int(sb.smss))
}

// classify returns IsSACKED(r) and, for a range that is not SACKed,
// IsRangeLost(r). r.Start must not decrease between calls.
func (w *pipeWalker) classify(r header.SACKBlock) (sacked, lost bool) {
	for w.next < len(w.blocks) && w.blocks[w.next].End.LessThanEq(r.Start) {
		w.before += w.blocks[w.next].Start.Size(w.blocks[w.next].End)
		w.next++
	}
	above, aboveBytes := w.next, w.before
	if w.next < len(w.blocks) && w.blocks[w.next].Start.LessThanEq(r.Start) {
		// This block holds r.Start: it either covers r or ends inside
		// it, and IsRangeLost counts only the blocks after it.
		if w.blocks[w.next].Contains(r) {
			return true, false
		}
		above++
		aboveBytes += w.blocks[w.next].Start.Size(w.blocks[w.next].End)
	}
	n, bytes := len(w.blocks)-above, w.total-aboveBytes
	return false, n >= nDupAckThreshold || bytes >= w.lostMin
}

// setPipeWalk is SetPipe computed with a pipeWalker; see SetPipe for the
// RFC 6675 steps, which it follows, except that it stops at the first
// segment at or beyond SndNxt (SetPipe only leaves that segment's inner
// loop; the write list is in sequence order, so the later ones add
// nothing either).
//
// +checklocks:s.ep.mu
func (s *sender) setPipeWalk(w *pipeWalker) {
	w.reset(s.ep.scoreboard)
	pipe := 0
	smss := seqnum.Size(s.ep.scoreboard.SMSS())
	for s1 := s.writeList.Front(); s1 != nil; s1 = s1.Next() {
		if s1.payloadSize() == 0 || !s.isAssignedSequenceNumber(s1) || !s1.sequenceNumber.LessThan(s.SndNxt) {
			break
		}
		segEnd := s1.sequenceNumber.Add(seqnum.Size(s1.payloadSize()))
		for startSeq := s1.sequenceNumber; startSeq.LessThan(segEnd); startSeq = startSeq.Add(smss) {
			endSeq := startSeq.Add(smss)
			if segEnd.LessThan(endSeq) {
				endSeq = segEnd
			}
			sacked, lost := w.classify(header.SACKBlock{Start: startSeq, End: endSeq})
			if sacked {
				continue
			}
			if !lost {
				pipe++
			}
			if s1.sequenceNumber.LessThanEq(s.FastRecovery.HighRxt) {
				pipe++
			}
		}
	}
	s.Outstanding = pipe
}
