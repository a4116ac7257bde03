package impair

import (
	"math"
	"testing"
	"time"

	"github.com/teredo-go/teredo/clock"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// delivered records when each packet (its first byte) came out of a line.
type delivered struct {
	id byte
	at time.Duration
}

func newTestLine(p Profile, seed uint64) (*clock.Fake, *Line, *[]delivered) {
	clk := clock.NewFake(t0)
	var got []delivered
	l := NewLine(clk, p, seed, func(b []byte) { got = append(got, delivered{b[0], clk.Now().Sub(t0)}) })
	return clk, l, &got
}

func TestLineDelay(t *testing.T) {
	clk, l, got := newTestLine(Profile{RTT: 20 * time.Millisecond}, 1)
	buf := []byte{0}
	for i := range 3 {
		buf[0] = byte(i)
		l.Send(buf) // the line copies: reusing buf must not change queued packets
		clk.Advance(time.Millisecond)
	}
	clk.Advance(6 * time.Millisecond) // t = 9 ms
	if len(*got) != 0 {
		t.Fatalf("delivered before the 10 ms one-way delay: %v", *got)
	}
	clk.Advance(10 * time.Millisecond)
	want := []delivered{{0, 10 * time.Millisecond}, {1, 11 * time.Millisecond}, {2, 12 * time.Millisecond}}
	if len(*got) != len(want) {
		t.Fatalf("delivered %v, want %v", *got, want)
	}
	for i := range want {
		if (*got)[i] != want[i] {
			t.Errorf("packet %d: delivered %v, want %v", i, (*got)[i], want[i])
		}
	}
	if clk.Pending() != 0 {
		t.Errorf("%d timers left armed on an empty line", clk.Pending())
	}
	if s := l.Stats(); s != (Stats{In: 3, Out: 3}) {
		t.Errorf("stats %+v", s)
	}
	// An idle line starts again on the next packet.
	l.Send([]byte{7})
	clk.Advance(10 * time.Millisecond)
	if n := len(*got); n != 4 || (*got)[3] != (delivered{7, 29 * time.Millisecond}) {
		t.Errorf("after idling: %v", *got)
	}
}

func TestLineJitterKeepsOrder(t *testing.T) {
	p := Profile{RTT: 40 * time.Millisecond, Jitter: 5 * time.Millisecond}
	clk, l, got := newTestLine(p, 2)
	const n = 200
	for i := range n {
		l.Send([]byte{byte(i)})
		clk.Advance(3 * time.Millisecond) // sparser than the jitter: some spread shows
	}
	clk.Advance(time.Second)
	if len(*got) != n {
		t.Fatalf("delivered %d of %d", len(*got), n)
	}
	var lo, hi time.Duration = time.Hour, 0
	for i, d := range *got {
		if d.id != byte(i) {
			t.Fatalf("packet %d delivered as number %d: reordered", d.id, i)
		}
		if i > 0 && d.at < (*got)[i-1].at {
			t.Fatalf("packet %d left at %v, before packet %d at %v", i, d.at, i-1, (*got)[i-1].at)
		}
		delay := d.at - time.Duration(i)*3*time.Millisecond
		lo, hi = min(lo, delay), max(hi, delay)
		// Never earlier than delay-jitter; later only when held behind an
		// earlier packet, which is itself at most delay+jitter.
		if delay < 15*time.Millisecond || delay > 25*time.Millisecond {
			t.Fatalf("packet %d delayed %v, outside 20 ms ± 5 ms", i, delay)
		}
	}
	if hi-lo < 5*time.Millisecond {
		t.Errorf("delays span only %v..%v: no jitter", lo, hi)
	}
}

func TestLineLoss(t *testing.T) {
	for _, loss := range []float64{0, 0.005, 0.02, 0.5} {
		clk, l, got := newTestLine(Profile{RTT: 2 * time.Millisecond, Loss: loss}, 3)
		const n = 100000
		for range n {
			l.Send([]byte{1})
			clk.Advance(10 * time.Microsecond)
		}
		clk.Advance(time.Second)
		s := l.Stats()
		if s.In != n || s.Lost+s.Out != n || uint64(len(*got)) != s.Out || s.Overflow != 0 {
			t.Fatalf("loss %v: stats %+v, %d delivered", loss, s, len(*got))
		}
		// Binomial: within 5 standard deviations.
		mean := loss * n
		sd := math.Sqrt(n * loss * (1 - loss))
		if math.Abs(float64(s.Lost)-mean) > 5*sd+0.5 {
			t.Errorf("loss %v: lost %d of %d, want about %.0f ± %.0f", loss, s.Lost, n, mean, 5*sd)
		}
	}
}

func TestLineSeedRepeats(t *testing.T) {
	p := Profile{RTT: 10 * time.Millisecond, Jitter: 2 * time.Millisecond, Loss: 0.1}
	run := func(seed uint64) []delivered {
		clk, l, got := newTestLine(p, seed)
		for i := range 250 {
			l.Send([]byte{byte(i)})
			clk.Advance(time.Millisecond)
		}
		clk.Advance(time.Second)
		return *got
	}
	a, b, c := run(42), run(42), run(43)
	if len(a) != len(b) {
		t.Fatalf("same seed: %d and %d delivered", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed differs at %d: %v and %v", i, a[i], b[i])
		}
	}
	same := len(a) == len(c)
	for i := 0; same && i < len(a); i++ {
		same = a[i] == c[i]
	}
	if same {
		t.Error("seeds 42 and 43 gave the same run")
	}
}

func TestLineLimit(t *testing.T) {
	clk, l, got := newTestLine(Profile{RTT: 100 * time.Millisecond}, 4)
	l.limit = 10
	for i := range 15 {
		if ok := l.Send([]byte{byte(i)}); ok != (i < 10) {
			t.Fatalf("packet %d: queued %v", i, ok)
		}
	}
	clk.Advance(50 * time.Millisecond)
	if s := l.Stats(); s != (Stats{In: 15, Overflow: 5, Out: 10}) || len(*got) != 10 {
		t.Errorf("stats %+v, %d delivered", s, len(*got))
	}
}

func TestLineSetProfileAndClose(t *testing.T) {
	clk, l, got := newTestLine(Profile{RTT: 100 * time.Millisecond}, 5)
	l.Send([]byte{1})
	l.SetProfile(Profile{RTT: 20 * time.Millisecond})
	l.Send([]byte{2}) // may not overtake packet 1
	clk.Advance(50 * time.Millisecond)
	if len(*got) != 2 || (*got)[1] != (delivered{2, 50 * time.Millisecond}) {
		t.Fatalf("after the profile change: %v", *got)
	}
	l.Send([]byte{3})
	l.Close()
	clk.Advance(time.Second)
	if len(*got) != 2 {
		t.Errorf("delivered after Close: %v", *got)
	}
	if l.Send([]byte{4}) {
		t.Error("Send after Close queued a packet")
	}
	if clk.Pending() != 0 {
		t.Errorf("%d timers armed after Close", clk.Pending())
	}
}

func TestProfiles(t *testing.T) {
	for _, name := range []string{"20ms-0%", "50ms-0.5%", "100ms-1%", "150ms-2%"} {
		if _, ok := ProfileByName(name); !ok {
			t.Errorf("no profile %q", name)
		}
	}
	if _, ok := ProfileByName("nope"); ok {
		t.Error("found a profile that does not exist")
	}
}
