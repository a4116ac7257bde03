// Package socks5 is a SOCKS5 proxy server (RFC 1928, RFC 1929) that
// reaches destinations only through the dial functions it is given, so the
// same code fronts a user-space Teredo stack in production and loopback
// sockets in tests.
//
// It implements CONNECT and UDP ASSOCIATE, optional username/password
// authentication, and refuses BIND with "command not supported". It knows
// nothing of gVisor or Teredo: the glue lives in cmd/teredo-socks.
//
// # Contract for the injected functions
//
// Dial opens the stream for a CONNECT. network is always "tcp"; address is
// "host:port" where host is an IP literal (IPv4 or IPv6, never zoned) or a
// DNS name as the client sent it. Names are passed through unresolved: the
// dialer resolves them itself (for Teredo, AAAA through the host
// resolver). The server has already refused names that are empty, longer
// than 253 bytes or hold anything but letters, digits, '-', '_' and '.',
// and turned IP literals sent as names into IP literals. ctx carries the server's DialTimeout and is cancelled
// when the server closes.
//
// ListenPacket opens the outbound socket of one UDP association. The server
// calls WriteTo with a *net.UDPAddr that it may reuse after WriteTo returns,
// and accepts any net.Addr from ReadFrom whose String is "ip:port". Closing
// the socket must unblock ReadFrom.
//
// Resolve turns a datagram's destination name into one address. Results are
// cached per association: successes for its lifetime, failures for a few
// seconds.
//
// All three report failures as errors that ReplyFor can classify: wrap
// ErrNotAllowed for policy refusals, and the syscall errnos or timeouts of
// the underlying stack, with %w. A nil Dial or ListenPacket turns the
// matching command into "command not supported"; a nil Resolve drops
// datagrams addressed by name.
//
// # UDP relay
//
// The relay socket the client sends to is bound on the local address of
// the control connection, so a server listening on loopback only relays
// for local programs. It accepts datagrams from one source: the address
// the client declared in its request, or, for the parts it left zero, the
// control connection's IP and the first port seen from it. Fragmented
// datagrams (FRAG != 0) are dropped and counted. Replies from any remote
// address are forwarded (endpoint-independent filtering); remote policy is
// the outbound socket's business. The association ends when the control
// connection closes, when the server closes, or after UDPIdleTimeout with
// no datagram in either direction; the control connection is then closed.
// The idle timer is the control connection's read deadline, so it runs on
// the real clock.
package socks5

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero values of Server's tunables.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 30 * time.Second
	DefaultUDPIdleTimeout   = 2 * time.Minute // RFC 4787 REQ-5 floor for NAT UDP mappings
	DefaultMaxConns         = 1024
)

// ErrServerClosed is returned by Serve once Close or Shutdown has been
// called. It wraps net.ErrClosed, which server.Server.Serve and
// relay.Relay.Serve return when called after Close, so that one
// errors.Is(err, net.ErrClosed) test fits every role.
var ErrServerClosed = fmt.Errorf("socks5: server closed: %w", net.ErrClosed)

// Server is a SOCKS5 server. Set its fields before the first Serve and do
// not change them afterwards. A Server must not be copied after first use.
type Server struct {
	// Dial opens CONNECT streams; see the package documentation.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// ListenPacket opens the outbound socket of a UDP association.
	ListenPacket func(ctx context.Context) (net.PacketConn, error)
	// Resolve resolves names in UDP datagram headers.
	Resolve func(ctx context.Context, host string) (netip.Addr, error)

	// Username and Password, when either is non-empty, make RFC 1929
	// authentication mandatory. They are compared in constant time.
	Username, Password string

	// Logger receives per-session debug events and operational warnings.
	// Nil discards them.
	Logger *slog.Logger

	// HandshakeTimeout bounds greeting, authentication and request.
	HandshakeTimeout time.Duration
	// DialTimeout bounds Dial and ListenPacket.
	DialTimeout time.Duration
	// UDPIdleTimeout ends an association that relayed nothing for so long.
	UDPIdleTimeout time.Duration
	// MaxConns bounds concurrent sessions; connections beyond it are
	// closed as soon as they are accepted. Negative means no bound.
	MaxConns int

	initOnce sync.Once
	ctx      context.Context // cancelled by Close; parent of every session
	cancel   context.CancelFunc
	log      *slog.Logger
	bufs     sync.Pool    // *[]byte of copyBufSize, for CONNECT relays
	bigBufs  atomic.Int64 // bufs borrowed by CONNECT relays right now
	udpBufs  sync.Pool    // *[]byte of udpBufSize, for UDP relays

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	wg        sync.WaitGroup // one per session goroutine

	c counters
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.log = s.Logger
		if s.log == nil {
			s.log = slog.New(slog.DiscardHandler)
		}
		s.listeners = make(map[net.Listener]struct{})
		s.sessions = make(map[*session]struct{})
	})
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (s *Server) maxConns() int64 {
	switch {
	case s.MaxConns < 0:
		return -1
	case s.MaxConns == 0:
		return DefaultMaxConns
	}
	return int64(s.MaxConns)
}

// Serve accepts connections on ln and serves each in its own goroutine
// until ln fails or the server is closed. It closes ln before returning
// and always returns a non-nil error, ErrServerClosed after Close or
// Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var te interface{ Temporary() bool }
			if !errors.As(err, &te) || !te.Temporary() {
				return fmt.Errorf("socks5: accept: %w", err)
			}
			// Out of descriptors and the like: back off as net/http does,
			// without outliving Close.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("socks5: accept failed; retrying", "err", err, "delay", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
			}
			continue
		}
		backoff = 0
		s.c.accepted.Add(1)
		if n, limit := s.c.active.Add(1), s.maxConns(); limit >= 0 && n > limit {
			s.c.active.Add(-1)
			s.c.rejected.Add(1)
			conn.Close()
			continue
		}
		ss := s.newSession(conn)
		if ss == nil {
			s.c.active.Add(-1)
			conn.Close()
			return ErrServerClosed
		}
		go s.serveSession(ss)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops every listener and session at once and returns when all
// goroutines the server started have exited.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	s.closed = true
	lns := make([]net.Listener, 0, len(s.listeners))
	for ln := range s.listeners {
		lns = append(lns, ln)
	}
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()

	s.cancel()
	for _, ln := range lns {
		ln.Close()
	}
	for _, ss := range sessions {
		ss.close()
	}
	s.wg.Wait()
	return nil
}

// Shutdown stops the listeners, lets sessions finish on their own until
// ctx is done, then closes the rest as Close does. It returns ctx.Err() if
// it had to cut sessions short. No goroutine outlives it either way.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closed = true
	lns := make([]net.Listener, 0, len(s.listeners))
	for ln := range s.listeners {
		lns = append(lns, ln)
	}
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}

	drained := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(drained)
	}()
	var err error
	select {
	case <-drained:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.Close()
	<-drained
	return err
}

// session is one client connection.
type session struct {
	conn   net.Conn
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	closers []io.Closer
}

// newSession registers conn, or returns nil once the server is closed.
func (s *Server) newSession(conn net.Conn) *session {
	ctx, cancel := context.WithCancel(s.ctx)
	ss := &session{conn: conn, ctx: ctx, cancel: cancel}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		cancel()
		return nil
	}
	s.sessions[ss] = struct{}{}
	s.wg.Add(1)
	return ss
}

// track ties c's lifetime to the session. It reports false, and the caller
// must close c, if the session is already closed.
func (ss *session) track(c io.Closer) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return false
	}
	ss.closers = append(ss.closers, c)
	return true
}

// close ends the session: it unblocks every read and write of the client
// connection and of whatever the session opened. It is idempotent.
func (ss *session) close() {
	ss.mu.Lock()
	if ss.closed {
		ss.mu.Unlock()
		return
	}
	ss.closed = true
	closers := ss.closers
	ss.closers = nil
	ss.mu.Unlock()
	ss.cancel()
	ss.conn.Close()
	for _, c := range closers {
		c.Close()
	}
}

func (s *Server) serveSession(ss *session) {
	defer func() {
		ss.close()
		s.mu.Lock()
		delete(s.sessions, ss)
		s.mu.Unlock()
		s.c.active.Add(-1)
		s.wg.Done()
	}()

	ss.conn.SetDeadline(time.Now().Add(orDefault(s.HandshakeTimeout, DefaultHandshakeTimeout)))
	req, err := s.handshake(ss)
	if err != nil {
		var re *requestError
		if errors.As(err, &re) {
			s.reply(ss, re.reply, addr{})
		}
		if !errors.Is(err, errAuth) {
			s.c.handshakeFailures.Add(1)
		}
		s.log.Debug("socks5: handshake failed", "client", ss.conn.RemoteAddr(), "err", err)
		return
	}
	// Dial and ListenPacket have their own timeout; the handshake's must
	// not cut off a slow but successful dial (Teredo may need bubbles and
	// an echo test before the first SYN goes out).
	ss.conn.SetDeadline(time.Time{})
	switch req.cmd {
	case cmdConnect:
		s.connect(ss, req)
	case cmdAssociate:
		s.associate(ss, req)
	default: // BIND, and anything newer than RFC 1928
		s.log.Debug("socks5: command refused", "client", ss.conn.RemoteAddr(), "cmd", req.cmd)
		s.reply(ss, ReplyCommandNotSupported, addr{})
	}
}

var errAuth = errors.New("socks5: authentication failed")

// handshake runs method selection, authentication and reads the request.
func (s *Server) handshake(ss *session) (request, error) {
	c := ss.conn
	var buf [256]byte
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return request{}, fmt.Errorf("reading greeting: %w", err)
	}
	if buf[0] != socksVersion {
		return request{}, fmt.Errorf("%w: greeting version 0x%02x", errMalformed, buf[0])
	}
	methods := buf[:buf[1]]
	if _, err := io.ReadFull(c, methods); err != nil {
		return request{}, fmt.Errorf("reading methods: %w", err)
	}
	want := byte(methodNoAuth)
	if s.Username != "" || s.Password != "" {
		want = methodUserPass
	}
	if bytes.IndexByte(methods, want) < 0 {
		c.Write([]byte{socksVersion, methodNone})
		return request{}, fmt.Errorf("%w: no acceptable method in %x", errMalformed, methods)
	}
	if _, err := c.Write([]byte{socksVersion, want}); err != nil {
		return request{}, err
	}
	if want == methodUserPass {
		if err := s.authenticate(c); err != nil {
			return request{}, err
		}
	}
	req, err := readRequest(c)
	if err != nil {
		return request{}, fmt.Errorf("reading request: %w", err)
	}
	return req, nil
}

// authenticate runs the RFC 1929 sub-negotiation.
func (s *Server) authenticate(c net.Conn) error {
	var buf [256]byte
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return fmt.Errorf("reading auth: %w", err)
	}
	if buf[0] != authVersion {
		return fmt.Errorf("%w: auth version 0x%02x", errMalformed, buf[0])
	}
	user := make([]byte, buf[1])
	if _, err := io.ReadFull(c, user); err != nil {
		return fmt.Errorf("reading username: %w", err)
	}
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return fmt.Errorf("reading auth: %w", err)
	}
	pass := buf[:buf[0]]
	if _, err := io.ReadFull(c, pass); err != nil {
		return fmt.Errorf("reading password: %w", err)
	}
	if !s.credentialsMatch(user, pass) {
		s.c.authFailures.Add(1)
		c.Write([]byte{authVersion, 0x01})
		return fmt.Errorf("%w for user %q", errAuth, user)
	}
	_, err := c.Write([]byte{authVersion, 0x00})
	return err
}

// credentialsMatch compares digests so that neither the content nor the
// length of the secrets shows in the time taken, and evaluates both
// comparisons so a right username is not distinguishable either.
func (s *Server) credentialsMatch(user, pass []byte) bool {
	gu, gp := sha256.Sum256(user), sha256.Sum256(pass)
	wu, wp := sha256.Sum256([]byte(s.Username)), sha256.Sum256([]byte(s.Password))
	return subtle.ConstantTimeCompare(gu[:], wu[:])&subtle.ConstantTimeCompare(gp[:], wp[:]) == 1
}

// reply sends a reply and counts it. The write is bounded by
// HandshakeTimeout: a client that stops reading must not pin the session.
func (s *Server) reply(ss *session, rep Reply, bnd addr) error {
	var b [4 + 16 + 2]byte
	if int(rep) < numReplies {
		s.c.replies[rep].Add(1)
	}
	ss.conn.SetWriteDeadline(time.Now().Add(orDefault(s.HandshakeTimeout, DefaultHandshakeTimeout)))
	_, err := ss.conn.Write(appendReply(b[:0], rep, bnd))
	ss.conn.SetWriteDeadline(time.Time{})
	return err
}

// dialContext derives the context for Dial and ListenPacket.
func (s *Server) dialContext(ss *session) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ss.ctx, orDefault(s.DialTimeout, DefaultDialTimeout))
}

// replyForDialErr is ReplyFor, except that a dial cut short by the server
// closing is not blamed on the destination.
func (s *Server) replyForDialErr(ss *session, err error) Reply {
	if ss.ctx.Err() != nil && !errors.Is(ss.ctx.Err(), context.DeadlineExceeded) {
		return ReplyGeneralFailure
	}
	return ReplyFor(err)
}

// netAddrPort extracts an address from the net.Addr kinds sockets return.
func netAddrPort(a net.Addr) (netip.AddrPort, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort(), true
	case *net.UDPAddr:
		return a.AddrPort(), true
	case nil:
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap, err == nil
}
