// Package echo is the lab's TCP echo check: a server that returns every byte it
// reads, and a client that sends seeded pseudo-random data and compares what comes
// back, so a test learns that a stream crossed a tunnel both ways intact.
package echo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrMismatch is returned when the echoed data differs from the data sent.
var ErrMismatch = errors.New("echo: data came back altered")

// Result describes one echo exchange.
type Result struct {
	Sent         int64  `json:"sent"`
	Received     int64  `json:"received"`
	SentSHA256   string `json:"sent_sha256"`
	RecvSHA256   string `json:"received_sha256"`
	Milliseconds int64  `json:"ms"`
	Remote       string `json:"remote"`
	Local        string `json:"local"`
}

// halfCloser is a connection whose writing side can be shut on its own.
type halfCloser interface {
	CloseWrite() error
}

// Check sends size bytes on c, half-closes it, reads the echo until EOF and
// compares digests. It closes c, and ctx bounds the whole exchange.
func Check(ctx context.Context, c net.Conn, size int64, seed uint64) (Result, error) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	start := time.Now()
	r := Result{Remote: c.RemoteAddr().String(), Local: c.LocalAddr().String()}
	sent, recv := sha256.New(), sha256.New()
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() {
		src := io.LimitReader(rand.NewChaCha8(seedBytes(seed)), size)
		r.Sent, werr = io.Copy(io.MultiWriter(c, sent), src)
		if werr == nil {
			if hc, ok := c.(halfCloser); ok {
				werr = hc.CloseWrite()
			} else {
				werr = fmt.Errorf("echo: %T cannot half-close", c)
			}
		}
	})
	var rerr error
	r.Received, rerr = io.Copy(recv, c)
	wg.Wait()
	r.SentSHA256 = hex.EncodeToString(sent.Sum(nil))
	r.RecvSHA256 = hex.EncodeToString(recv.Sum(nil))
	r.Milliseconds = time.Since(start).Milliseconds()
	if err := errors.Join(werr, rerr); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return r, fmt.Errorf("echo with %s after %d bytes sent, %d received: %w", r.Remote, r.Sent, r.Received, err)
	}
	if r.Sent != size || r.Received != size || r.SentSHA256 != r.RecvSHA256 {
		return r, fmt.Errorf("%w: sent %d bytes (sha256 %s), received %d (sha256 %s)", ErrMismatch, r.Sent, r.SentSHA256, r.Received, r.RecvSHA256)
	}
	return r, nil
}

func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	copy(b[8:], "teredo-lab-echo")
	return b
}

// Server echoes every connection accepted on a listener and counts them.
type Server struct {
	Accepted atomic.Int64 // connections accepted
	Echoed   atomic.Int64 // bytes returned
	wg       sync.WaitGroup
	ln       net.Listener
	idle     time.Duration
}

// Serve starts echoing connections from ln in the background, each one closed after
// idle without traffic. Close stops it.
func Serve(ln net.Listener, idle time.Duration) *Server {
	s := &Server{ln: ln, idle: idle}
	s.wg.Go(s.loop)
	return s
}

func (s *Server) loop() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.Accepted.Add(1)
		s.wg.Go(func() { s.echo(c) })
	}
}

func (s *Server) echo(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 32<<10)
	for {
		c.SetReadDeadline(time.Now().Add(s.idle))
		n, err := c.Read(buf)
		if n > 0 {
			c.SetWriteDeadline(time.Now().Add(s.idle))
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			s.Echoed.Add(int64(n))
		}
		if err != nil {
			if hc, ok := c.(halfCloser); ok && errors.Is(err, io.EOF) {
				hc.CloseWrite()
			}
			return
		}
	}
}

// Close stops accepting and waits until every connection is done (each is bounded
// by the idle timeout).
func (s *Server) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	return err
}
