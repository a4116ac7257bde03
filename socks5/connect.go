package socks5

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

const (
	// copyBufSize is the CONNECT relay buffer for bulk transfers: large
	// enough to amortise syscalls over a TCP receive window's worth of data.
	copyBufSize = 32 << 10
	// idleBufSize is what each relay direction reads into until data
	// arrives faster than it drains. It is what an idle session pins per
	// direction while blocked in Read, so it stays small; it still holds a
	// keystroke, a small request or a Teredo-sized segment in one read.
	idleBufSize = 2 << 10
)

func (s *Server) connect(ss *session, req request) {
	if s.Dial == nil {
		s.reply(ss, ReplyCommandNotSupported, addr{})
		return
	}
	ctx, cancel := s.dialContext(ss)
	target, err := s.Dial(ctx, "tcp", req.dst.hostPort())
	cancel()
	if err != nil {
		rep := s.replyForDialErr(ss, err)
		s.log.Debug("socks5: connect failed", "client", ss.conn.RemoteAddr(), "dst", req.dst, "reply", rep, "err", err)
		s.reply(ss, rep, addr{})
		return
	}
	if !ss.track(target) {
		target.Close()
		return
	}
	var bnd addr
	if ta, ok := target.LocalAddr().(*net.TCPAddr); ok {
		bnd = addrFromAddrPort(ta.AddrPort())
	}
	if err := s.reply(ss, ReplySucceeded, bnd); err != nil {
		return
	}
	s.log.Debug("socks5: connected", "client", ss.conn.RemoteAddr(), "dst", req.dst)

	done := make(chan struct{})
	go func() {
		defer close(done)
		s.pipe(ss, target, ss.conn, &s.c.bytesUp)
	}()
	s.pipe(ss, ss.conn, target, &s.c.bytesDown)
	<-done
}

// pipe copies src to dst through a relayBuf. At EOF it half-closes dst so
// the far end sees the same EOF while the other direction keeps flowing;
// on any other failure it closes the whole session, which also ends the
// other direction's pipe.
//
// It does not use io.Copy: *net.TCPConn's ReadFrom falls back to a fresh
// 32 KiB buffer per call when the source is not a kernel socket, which is
// always the case for a user-space stack.
func (s *Server) pipe(ss *session, dst, src net.Conn, count *atomic.Uint64) {
	rb := &relayBuf{pool: &s.bufs, held: &s.bigBufs}
	defer rb.release()
	for {
		buf := rb.next()
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				ss.close()
				return
			}
			count.Add(uint64(n))
		}
		rb.used(n)
		if rerr == nil {
			continue
		}
		if !errors.Is(rerr, io.EOF) {
			ss.close()
			return
		}
		// Without CloseWrite there is no way to pass the EOF on short of
		// closing the connection, which would cut off the reply still
		// coming the other way; the session then ends when the other
		// direction does.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() != nil {
				ss.close()
			}
		}
		return
	}
}

// relayBuf is the read buffer of one relay direction. A Read that blocks
// pins its buffer, so a session must not wait for data in a large one:
// relayBuf reads into a small buffer of its own and borrows a pooled
// copyBufSize buffer only while the source has more queued than that,
// that is, while reads fill the buffer they are given. A read that
// comes back short has drained the source, so the next one will likely
// block, and the large buffer goes back to the pool first. (Keeping it
// until a read uses less than some fraction would save a small read per
// burst, but would leave a keep-alive connection idling on 32 KiB after
// every response whose tail exceeded that fraction.)
type relayBuf struct {
	small [idleBufSize]byte
	big   *[]byte       // borrowed from pool, or nil
	pool  *sync.Pool    // of *[]byte with copyBufSize bytes
	held  *atomic.Int64 // large buffers borrowed across the server
}

// next returns the buffer for the next Read.
func (r *relayBuf) next() []byte {
	if r.big != nil {
		return *r.big
	}
	return r.small[:]
}

// used adapts the buffer to a Read into next() that returned n bytes,
// once those bytes have been written on.
func (r *relayBuf) used(n int) {
	switch {
	case r.big == nil && n == len(r.small):
		bp, _ := r.pool.Get().(*[]byte)
		if bp == nil {
			b := make([]byte, copyBufSize)
			bp = &b
		}
		r.big = bp
		r.held.Add(1)
	case r.big != nil && n < len(*r.big):
		r.release()
	}
}

// release returns a borrowed large buffer to the pool.
func (r *relayBuf) release() {
	if r.big != nil {
		r.pool.Put(r.big)
		r.big = nil
		r.held.Add(-1)
	}
}
