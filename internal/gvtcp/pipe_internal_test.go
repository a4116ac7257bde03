package tcp

import (
	"math/rand/v2"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// TestPipeWalkerMatchesScoreboard checks pipeWalker against the scoreboard's
// own IsSACKED and IsRangeLost on random scoreboards, near a sequence number
// wrap too, for ranges visited in order as SetPipe visits them.
func TestPipeWalkerMatchesScoreboard(t *testing.T) {
	const smss = 1220
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 2000; trial++ {
		iss := seqnum.Value(rng.Uint32())
		if trial%4 == 0 {
			iss = seqnum.Value(0xffffffff - uint32(rng.IntN(200*smss)))
		}
		sb := NewSACKScoreboard(smss, iss)
		window := 1 + rng.IntN(400)
		for i := rng.IntN(40); i > 0; i-- {
			start := iss.Add(seqnum.Size(rng.IntN(window) * smss))
			end := start.Add(seqnum.Size((1 + rng.IntN(8)) * smss))
			if rng.IntN(3) == 0 {
				end = start.Add(seqnum.Size(1 + rng.IntN(smss)))
			}
			sb.Insert(header.SACKBlock{Start: start, End: end})
		}
		var w pipeWalker
		w.reset(sb)
		// Ranges of one MSS (or less at a segment's end), in order.
		seq := iss
		for i := 0; i < window+8; i++ {
			size := seqnum.Size(smss)
			if rng.IntN(5) == 0 {
				size = seqnum.Size(1 + rng.IntN(smss))
			}
			r := header.SACKBlock{Start: seq, End: seq.Add(size)}
			sacked, lost := w.classify(r)
			if want := sb.IsSACKED(r); sacked != want {
				t.Fatalf("trial %d range %v: sacked %v, scoreboard says %v (%v)", trial, r, sacked, want, sb)
			}
			if !sacked {
				if want := sb.IsRangeLost(r); lost != want {
					t.Fatalf("trial %d range %v: lost %v, scoreboard says %v (%v)", trial, r, lost, want, sb)
				}
			}
			seq = seq.Add(size)
		}
	}
}

// BenchmarkSetPipeClassify compares the per-ACK work of SetPipe's two
// scoreboard searches per MSS with the walker's, for a window of 2000
// segments with 20 holes:
//
//	go test -run XXX -bench SetPipeClassify ./internal/gvtcp
func BenchmarkSetPipeClassify(b *testing.B) {
	const smss, segs = 1220, 2000
	iss := seqnum.Value(1000)
	sb := NewSACKScoreboard(smss, iss)
	for i := 0; i < 20; i++ {
		start := iss.Add(seqnum.Size((i*100 + 1) * smss))
		sb.Insert(header.SACKBlock{Start: start, End: start.Add(99 * smss)})
	}
	ranges := make([]header.SACKBlock, segs)
	for i := range ranges {
		s := iss.Add(seqnum.Size(i * smss))
		ranges[i] = header.SACKBlock{Start: s, End: s.Add(smss)}
	}
	b.Run("scoreboard", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			for _, r := range ranges {
				if !sb.IsSACKED(r) {
					sb.IsRangeLost(r)
				}
			}
		}
	})
	b.Run("walker", func(b *testing.B) {
		var w pipeWalker
		for i := 0; i < b.N; i++ {
			w.reset(sb)
			for _, r := range ranges {
				w.classify(r)
			}
		}
	})
}
