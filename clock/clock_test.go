package clock

import (
	"testing"
	"time"
)

func TestFakeOrderAndReschedule(t *testing.T) {
	start := time.Unix(1000, 0)
	c := NewFake(start)
	var got []string
	c.AfterFunc(2*time.Second, func() { got = append(got, "b@"+c.Now().Sub(start).String()) })
	c.AfterFunc(1*time.Second, func() {
		got = append(got, "a@"+c.Now().Sub(start).String())
		c.AfterFunc(500*time.Millisecond, func() { got = append(got, "c@"+c.Now().Sub(start).String()) })
	})
	stopped := c.AfterFunc(time.Second, func() { got = append(got, "never") })
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop should report true once")
	}
	c.Advance(3 * time.Second)
	want := []string{"a@1s", "c@1.5s", "b@2s"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if !c.Now().Equal(start.Add(3 * time.Second)) {
		t.Fatalf("now = %v", c.Now())
	}
	if c.Pending() != 0 {
		t.Fatalf("pending = %d", c.Pending())
	}
}

func TestFakeReset(t *testing.T) {
	c := NewFake(time.Unix(0, 0))
	n := 0
	tm := c.AfterFunc(time.Second, func() { n++ })
	c.Advance(900 * time.Millisecond)
	if tm.Reset(time.Second) != true {
		t.Fatal("Reset of active timer should report true")
	}
	c.Advance(900 * time.Millisecond)
	if n != 0 {
		t.Fatal("fired before reset deadline")
	}
	c.Advance(200 * time.Millisecond)
	if n != 1 {
		t.Fatalf("n = %d", n)
	}
	if tm.Reset(time.Second) {
		t.Fatal("Reset of fired timer should report false")
	}
	c.Advance(time.Second)
	if n != 2 {
		t.Fatalf("n = %d", n)
	}
}
