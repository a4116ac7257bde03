package stack_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/clock"
	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/udpio"
	"github.com/teredo-go/teredo/udpio/udpiotest"
)

// lookup is one LookupNetIP call of a stepResolver, answered by the test.
type lookup struct {
	host  string
	reply chan []netip.Addr // nil: "no such host"
}

// stepResolver hands every lookup to the test, so that the test decides
// what each resolution round sees and knows when it happened.
type stepResolver chan lookup

func (r stepResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	l := lookup{host: host, reply: make(chan []netip.Addr, 1)}
	select {
	case r <- l:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case addrs := <-l.reply:
		if addrs == nil {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return addrs, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// next waits for the stack's next lookup.
func (r stepResolver) next(t *testing.T) lookup {
	t.Helper()
	select {
	case l := <-r:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no lookup")
		return lookup{}
	}
}

// TestStartNeverGivesUp starts a stack whose only server name does not
// resolve: Start returns at once, dials fail with ErrNotQualified, and the
// stack resolves the name again after each backoff, on the fake clock,
// until it resolves to a server that answers.
func TestStartNeverGivesUp(t *testing.T) {
	network := udpiotest.NewNetwork()
	srvAddr := netip.MustParseAddr("192.0.2.1")
	srv, err := server.New(server.Config{
		Primary:    srvAddr,
		IPv4Filter: proto.AnyIPv4,
		Listen:     func(a netip.AddrPort) (udpio.Conn, error) { return network.Listen(a) },
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(context.Background()); close(served) }()
	defer func() { srv.Close(); <-served }()

	conn, err := network.Listen(netip.MustParseAddrPort("192.0.2.50:6000"))
	if err != nil {
		t.Fatal(err)
	}
	fake := clock.NewFake(time.Unix(1_700_000_000, 0))
	res := make(stepResolver)
	s, err := stack.Start(stack.Config{
		ServerNames: []string{"teredo.test"},
		Resolver:    res,
		Conn:        conn,
		Clock:       fake,
		IPv4Filter:  proto.AnyIPv4,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	qualified := make(chan client.Qualified, 1)
	offline := make(chan client.Offline, 1)
	defer s.Subscribe(func(ev stack.Event) {
		switch ev := ev.(type) {
		case client.Qualified:
			qualified <- ev
		case client.Offline:
			select {
			case offline <- ev:
			default:
			}
		}
	})()

	// Not qualified: dial and listen fail at once, with the sentinel.
	if err := s.Ready(); !errors.Is(err, stack.ErrNotQualified) {
		t.Fatalf("Ready = %v", err)
	}
	_, err = dialer.New(s).Dial("tcp", "[2001:db8::1]:80")
	if !errors.Is(err, stack.ErrNotQualified) || !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("dial before qualification: %v", err)
	}
	if _, err := listener.Listen(s, "tcp", ":80"); !errors.Is(err, stack.ErrNotQualified) {
		t.Fatalf("listen before qualification: %v", err)
	}

	// The first round of resolution fails.
	l := res.next(t)
	if l.host != "teredo.test" {
		t.Fatalf("looked up %q", l.host)
	}
	l.reply <- nil
	// The client waits MinRetryDelay, offline, and asks for the names
	// again: the first round is over, and its failure is the last error.
	fake.Advance(client.MinRetryDelay)
	l = res.next(t)
	if err := s.Status().LastError; err == nil || !strings.Contains(err.Error(), "no such host") {
		t.Fatalf("last error %v", err)
	}
	if st := s.Status().Client.State; st != client.StateOffline {
		t.Fatalf("state %v", st)
	}
	l.reply <- []netip.Addr{srvAddr}

	select {
	case q := <-qualified:
		if q.Server != srvAddr || s.Addr() != q.Addr {
			t.Fatalf("qualified %+v, stack address %v", q, s.Addr())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("not qualified after the name resolved: %+v", s.Status())
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("Ready after qualification: %v", err)
	}
	if got := s.ServerName(srvAddr); got != "teredo.test" {
		t.Fatalf("ServerName = %q", got)
	}
	if err := s.Status().LastError; err != nil {
		t.Fatalf("last error %v while qualified", err)
	}
	ln, err := listener.Listen(s, "tcp", ":80")
	if err != nil {
		t.Fatalf("listen once qualified: %v", err)
	}
	ln.Close()

	// The server goes away: the next refresh and its retries go
	// unanswered, and the stack is not ready again until it comes back.
	srv.Close()
	<-served
	for len(offline) > 0 {
		<-offline // the one from before the name resolved
	}
	fake.Advance(client.RefreshInterval)
	for range client.QualificationTries {
		fake.Advance(client.QualificationDelay)
	}
	select {
	case <-offline:
	case <-time.After(10 * time.Second):
		t.Fatalf("not offline without the server: %+v", s.Status())
	}
	if err := s.Ready(); !errors.Is(err, stack.ErrNotQualified) {
		t.Fatalf("Ready while offline: %v", err)
	}
	if err := s.Status().LastError; !errors.Is(err, client.ErrNoReply) {
		t.Fatalf("last error while offline: %v", err)
	}
}

// TestStartLiteralServer needs no resolver: an IPv4 literal among
// ServerNames is used as given.
func TestStartLiteralServer(t *testing.T) {
	port := startServer(t)
	s, err := stack.Start(stack.Config{
		ServerNames: []string{serverPrimary.String()},
		Resolver:    stepResolver(nil), // a lookup would block until Close
		Secondary:   serverSecondary,
		ServerPort:  port,
		LocalAddr:   netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter:  proto.AnyIPv4,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	select {
	case <-s.Qualified():
	case <-time.After(10 * time.Second):
		t.Fatalf("not qualified: %+v", s.Status())
	}
	if s.ServerName(serverPrimary) != "" {
		t.Fatalf("a literal got a name: %q", s.ServerName(serverPrimary))
	}
}

// TestStartRefusesBadLiterals fails at once for a server literal that no
// retry can make usable.
func TestStartRefusesBadLiterals(t *testing.T) {
	for _, n := range []string{"10.0.0.1", "2001:db8::1"} {
		_, err := stack.Start(stack.Config{ServerNames: []string{n}, Conn: nil, LocalAddr: netip.MustParseAddrPort("127.0.0.1:0")})
		if err == nil || !strings.Contains(err.Error(), "not a global unicast IPv4 address") {
			t.Errorf("%s: %v", n, err)
		}
	}
}
