// Package server is the Teredo server role (RFC 4380 §5.3): it answers
// router solicitations on two IPv4 addresses and relays bubbles and small
// ICMPv6 messages between Teredo clients, relays and native IPv6 hosts,
// keeping no state per client beyond a bounded per-source rate-limit table.
//
// The rules live in Processor, which handles one datagram at a time with an
// injected clock and sender; Server is the thin adapter that moves batches
// of datagrams between two UDP sockets and a Processor.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/teredo-go/teredo/udpio"
)

// recvBufSize bounds the datagrams the server reads. Nothing it forwards
// or answers comes near it; larger datagrams are truncated and then dropped
// as malformed.
const recvBufSize = 4096

// batchSize is the number of datagrams read or written per system call.
const batchSize = 32

// ErrServing is returned by a second call to Serve.
var ErrServing = errors.New("server: Serve already called")

// Server is a Teredo server on two UDP sockets.
type Server struct {
	p     *Processor
	conns [2]udpio.Conn
	log   *slog.Logger

	mu      sync.Mutex
	serving bool
	closed  bool
	done    chan struct{}
	loops   sync.WaitGroup
}

// New opens the server's sockets on cfg's primary and secondary addresses.
// The server answers nothing until Serve runs (datagrams wait in the socket
// buffers).
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p, err := NewProcessor(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{p: p, log: cfg.Logger, done: make(chan struct{})}
	for i, ap := range []netip.AddrPort{p.primary, p.secondary} {
		if !ap.IsValid() {
			continue // single-address mode without a secondary port
		}
		c, err := cfg.Listen(ap)
		if err != nil {
			for _, c := range s.conns[:i] {
				c.Close()
			}
			return nil, fmt.Errorf("server: listen on %v: %w", ap, err)
		}
		s.conns[i] = c
	}
	return s, nil
}

// Addrs returns the primary and secondary addresses the server listens on;
// secondary is the zero value in single-address mode without a secondary
// port.
func (s *Server) Addrs() (primary, secondary netip.AddrPort) {
	return s.p.primary, s.p.secondary
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats { return s.p.Stats() }

// Status returns the server's addresses, settings and counters.
func (s *Server) Status() Status { return s.p.Status() }

// Serve runs the receive loops until ctx is done or Close is called, then
// closes the server and returns nil; it returns an error if a socket fails.
// It may be called once.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return net.ErrClosed
	case s.serving:
		s.mu.Unlock()
		return ErrServing
	}
	s.serving = true
	errc := make(chan error, len(s.conns))
	for i := range s.conns {
		if s.conns[i] == nil {
			continue
		}
		s.loops.Add(1)
		go func() {
			defer s.loops.Done()
			errc <- s.loop(Socket(i))
		}()
	}
	s.mu.Unlock()

	s.log.Info("teredo server running", "primary", s.p.primary, "secondary", s.p.secondary, "mtu", s.p.mtu)
	if s.p.out == nil {
		s.log.Warn("no IPv6 output: echo requests from clients to native IPv6 hosts (relay discovery) will be dropped")
	}

	var err error
	select {
	case <-ctx.Done():
	case <-s.done:
	case err = <-errc:
	}
	s.Close() // waits for both loops, so errc holds all their results
	for len(errc) > 0 {
		if e := <-errc; err == nil {
			err = e
		}
	}
	return err
}

// Close closes the sockets and waits for the receive loops to stop.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.loops.Wait()
		return nil
	}
	s.closed = true
	close(s.done)
	var err error
	for _, c := range s.conns {
		if c == nil {
			continue
		}
		if e := c.Close(); e != nil && err == nil {
			err = e
		}
	}
	s.mu.Unlock()
	s.loops.Wait()
	return err
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// loop reads batches from one socket, processes them and flushes the
// replies in batches.
func (s *Server) loop(sock Socket) error {
	conn := s.conns[sock]
	msgs := make([]udpio.Message, batchSize)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, recvBufSize)}
	}
	q := newSendQueue(s)
	for {
		n, err := conn.ReadBatch(msgs)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.isClosed() {
				return nil
			}
			return fmt.Errorf("server: read on %v socket: %w", sock, err)
		}
		for i := range msgs[:n] {
			m := &msgs[i]
			s.p.Process(sock, m.Buffers[0][:m.N], m.Addr, q)
		}
		q.flush()
	}
}

// sendQueue is the Sender of one receive loop: it copies datagrams into
// preallocated slots and sends them per socket with WriteBatch.
type sendQueue struct {
	s    *Server
	msgs [2][]udpio.Message
	bufs [2][][]byte
	n    [2]int
}

func newSendQueue(s *Server) *sendQueue {
	q := &sendQueue{s: s}
	for i := range q.msgs {
		q.msgs[i] = make([]udpio.Message, batchSize)
		q.bufs[i] = make([][]byte, batchSize)
		for j := range q.msgs[i] {
			q.bufs[i][j] = make([]byte, 0, maxOut)
			q.msgs[i][j].Buffers = make([][]byte, 1)
		}
	}
	return q
}

// SendFrom implements Sender.
func (q *sendQueue) SendFrom(sock Socket, b []byte, dst netip.AddrPort) error {
	if sock > Secondary || q.s.conns[sock] == nil {
		return fmt.Errorf("server: no socket %v", sock)
	}
	if q.n[sock] == len(q.msgs[sock]) {
		q.flushSocket(sock)
	}
	i := q.n[sock]
	q.bufs[sock][i] = append(q.bufs[sock][i][:0], b...)
	m := &q.msgs[sock][i]
	m.Buffers[0] = q.bufs[sock][i]
	m.Addr = dst
	q.n[sock]++
	return nil
}

func (q *sendQueue) flush() {
	q.flushSocket(Primary)
	q.flushSocket(Secondary)
}

func (q *sendQueue) flushSocket(sock Socket) {
	msgs := q.msgs[sock][:q.n[sock]]
	q.n[sock] = 0
	for len(msgs) > 0 {
		n, err := q.s.conns[sock].WriteBatch(msgs)
		if err == nil && n >= len(msgs) {
			return
		}
		if errors.Is(err, net.ErrClosed) {
			q.s.p.countSendErrors(len(msgs) - n)
			return
		}
		// msgs[n] was refused; the rest may still go.
		q.s.p.countSendErrors(1)
		if n < len(msgs) && q.s.log.Enabled(context.Background(), slog.LevelDebug) {
			q.s.log.Debug("send", "socket", sock.String(), "dst", msgs[n].Addr, "err", err)
		}
		msgs = msgs[min(n+1, len(msgs)):]
	}
}
