package dialer

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Error is a gVisor network error made comparable: errors.Is matches it
// against the syscall.Errno a kernel socket would have returned, and against
// net.ErrClosed or os.ErrDeadlineExceeded where those apply.
type Error struct {
	// Msg is gVisor's description.
	Msg string
	// Errno is the closest system error number, or 0.
	Errno syscall.Errno
	// Sentinel is nil or what the error also matches besides Errno, such
	// as net.ErrClosed or os.ErrDeadlineExceeded.
	Sentinel error
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the errno and sentinel, for errors.Is.
func (e *Error) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Errno != 0 {
		errs = append(errs, e.Errno)
	}
	if e.Sentinel != nil {
		errs = append(errs, e.Sentinel)
	}
	return errs
}

// Timeout reports whether the error is a timeout, for net.Error.
func (e *Error) Timeout() bool {
	return e.Errno == syscall.ETIMEDOUT || errors.Is(e.Sentinel, os.ErrDeadlineExceeded)
}

// Temporary is part of net.Error.
func (e *Error) Temporary() bool { return e.Timeout() }

var _ net.Error = (*Error)(nil)

// errnoOf is the one translation of gVisor's errors: the kernel error
// number a socket would have returned, and what else the error matches.
// Unknown errors get neither.
func errnoOf(err tcpip.Error) (syscall.Errno, error) {
	switch err.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED, nil
	case *tcpip.ErrHostUnreachable:
		return syscall.EHOSTUNREACH, nil
	case *tcpip.ErrHostDown:
		return syscall.EHOSTDOWN, nil
	case *tcpip.ErrNetworkUnreachable:
		return syscall.ENETUNREACH, nil
	case *tcpip.ErrNoNet:
		return syscall.ENONET, nil
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT, nil
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET, nil
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		return syscall.ECONNABORTED, nil
	case *tcpip.ErrNotConnected:
		return syscall.ENOTCONN, nil
	case *tcpip.ErrAlreadyConnected:
		return syscall.EISCONN, nil
	case *tcpip.ErrAlreadyConnecting:
		return syscall.EALREADY, nil
	case *tcpip.ErrPortInUse, *tcpip.ErrDuplicateAddress:
		return syscall.EADDRINUSE, nil
	case *tcpip.ErrBadLocalAddress, *tcpip.ErrNoPortAvailable:
		return syscall.EADDRNOTAVAIL, nil
	case *tcpip.ErrMessageTooLong:
		return syscall.EMSGSIZE, nil
	case *tcpip.ErrNoBufferSpace:
		return syscall.ENOBUFS, nil
	case *tcpip.ErrWouldBlock:
		return syscall.EAGAIN, nil
	case *tcpip.ErrDestinationRequired:
		return syscall.EDESTADDRREQ, nil
	case *tcpip.ErrInvalidOptionValue, *tcpip.ErrAlreadyBound:
		return syscall.EINVAL, nil
	case *tcpip.ErrBadAddress:
		return syscall.EFAULT, nil
	case *tcpip.ErrClosedForSend:
		return syscall.EPIPE, nil
	case *tcpip.ErrInvalidEndpointState:
		return syscall.EINVAL, net.ErrClosed
	case *tcpip.ErrAddressFamilyNotSupported:
		return syscall.EAFNOSUPPORT, nil
	case *tcpip.ErrNotSupported:
		return syscall.EOPNOTSUPP, nil
	case *tcpip.ErrNotPermitted:
		return syscall.EPERM, nil
	}
	return 0, nil
}

// byMessage recovers the gVisor error behind a message: gonet (gVisor's
// net.Conn adapter) returns errors.New(err.String()), which loses the type
// that errnoOf switches on. It is read-only, and built from the same types
// as errnoOf, so that the translation itself never looks at text.
var byMessage = func() map[string]tcpip.Error {
	m := make(map[string]tcpip.Error)
	for _, e := range []tcpip.Error{
		&tcpip.ErrConnectionRefused{}, &tcpip.ErrHostUnreachable{}, &tcpip.ErrHostDown{},
		&tcpip.ErrNetworkUnreachable{}, &tcpip.ErrNoNet{}, &tcpip.ErrTimeout{},
		&tcpip.ErrConnectionReset{}, &tcpip.ErrConnectionAborted{}, &tcpip.ErrAborted{},
		&tcpip.ErrNotConnected{}, &tcpip.ErrAlreadyConnected{}, &tcpip.ErrAlreadyConnecting{},
		&tcpip.ErrPortInUse{}, &tcpip.ErrDuplicateAddress{}, &tcpip.ErrBadLocalAddress{},
		&tcpip.ErrMessageTooLong{}, &tcpip.ErrNoBufferSpace{}, &tcpip.ErrWouldBlock{},
		&tcpip.ErrDestinationRequired{}, &tcpip.ErrInvalidOptionValue{}, &tcpip.ErrBadAddress{},
		&tcpip.ErrClosedForSend{}, &tcpip.ErrInvalidEndpointState{},
		&tcpip.ErrAddressFamilyNotSupported{}, &tcpip.ErrNotSupported{},
		&tcpip.ErrNoPortAvailable{}, &tcpip.ErrAlreadyBound{}, &tcpip.ErrNotPermitted{},
	} {
		m[e.String()] = e
	}
	return m
}()

// FromTCPIP converts a gVisor error to an *Error.
func FromTCPIP(err tcpip.Error) error {
	if err == nil {
		return nil
	}
	errno, sentinel := errnoOf(err)
	return &Error{Msg: err.String(), Errno: errno, Sentinel: sentinel}
}

// fromMessage converts an error gonet flattened to its message.
func fromMessage(msg string) *Error {
	e := &Error{Msg: msg}
	if terr, ok := byMessage[msg]; ok {
		e.Errno, e.Sentinel = errnoOf(terr)
	}
	return e
}

// errDeadline is the error of an operation whose deadline passed. It wraps
// os.ErrDeadlineExceeded and is a net.Error with Timeout true.
var errDeadline error = &Error{Msg: "i/o timeout", Sentinel: os.ErrDeadlineExceeded}

// TranslateError rewrites an error returned by gonet (gVisor's net.Conn
// adapter), which reports gVisor errors as opaque strings, often inside a
// *net.OpError, into one whose chain holds an *Error.
func TranslateError(err error) error {
	var op *net.OpError
	if !errors.As(err, &op) {
		if err == nil || err == io.EOF {
			return err
		}
		if _, ok := byMessage[err.Error()]; ok {
			return fromMessage(err.Error())
		}
		return err
	}
	inner := op.Err
	if _, ok := inner.(*Error); ok || inner == nil {
		return err
	}
	if ne, ok := inner.(net.Error); ok && ne.Timeout() {
		inner = errDeadline
	} else {
		inner = fromMessage(inner.Error())
	}
	return &net.OpError{Op: op.Op, Net: op.Net, Source: op.Source, Addr: op.Addr, Err: inner}
}
