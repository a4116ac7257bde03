//go:build !linux

package tun

import "net"

// Device is an open TUN interface; only Linux has one.
type Device struct{}

// Open reports ErrUnsupported.
func Open(Config) (*Device, error) { return nil, ErrUnsupported }

// Name returns the interface name.
func (d *Device) Name() string { return "" }

// Configured reports whether Open configured the interface.
func (d *Device) Configured() bool { return false }

// ReadPacket implements relay.Device.
func (d *Device) ReadPacket([]byte) (int, error) { return 0, net.ErrClosed }

// ReadPackets implements relay.BatchDevice.
func (d *Device) ReadPackets([][]byte, []int) (int, error) { return 0, net.ErrClosed }

// WritePacket implements relay.Device.
func (d *Device) WritePacket([]byte) error { return ErrUnsupported }

// Close implements relay.Device.
func (d *Device) Close() error { return nil }

// WritePackets implements relay.BatchWriter.
func (d *Device) WritePackets([][]byte) (int, error) { return 0, ErrUnsupported }

// Stats returns the device's counters.
func (d *Device) Stats() Stats { return Stats{} }
