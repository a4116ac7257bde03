package portmaptest

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
)

// IGD is a UPnP Internet Gateway Device with one WANIPConnection:1
// service: an SSDP responder on UDP and the description and SOAP control
// on an httptest server, both on the same loopback address.
type IGD struct {
	External netip.Addr

	ssdp net.PacketConn
	http *httptest.Server
	done chan struct{}

	mu       sync.Mutex
	mappings map[uint16]Mapping // by external port
	actions  []string
	// permanentOnly makes AddPortMapping with a lease fail with 725.
	permanentOnly bool
}

// NewIGD listens for SSDP on ip:0 and serves HTTP on ip:0.
func NewIGD(ip netip.Addr, external netip.Addr) (*IGD, error) {
	c, err := net.ListenPacket("udp4", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp4", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		c.Close()
		return nil, err
	}
	g := &IGD{External: external, ssdp: c, done: make(chan struct{}), mappings: make(map[uint16]Mapping)}
	g.http = httptest.NewUnstartedServer(http.HandlerFunc(g.serveHTTP))
	g.http.Listener.Close()
	g.http.Listener = l
	g.http.Start()
	go g.serveSSDP()
	return g, nil
}

// SSDPAddr is the SSDP responder's address.
func (g *IGD) SSDPAddr() netip.AddrPort { return g.ssdp.LocalAddr().(*net.UDPAddr).AddrPort() }

// SetPermanentOnly makes the device refuse leases other than 0 with UPnP
// error 725, as many IGD:1 routers do.
func (g *IGD) SetPermanentOnly(v bool) {
	g.mu.Lock()
	g.permanentOnly = v
	g.mu.Unlock()
}

// Mappings returns the table by external port.
func (g *IGD) Mappings() map[uint16]Mapping {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[uint16]Mapping, len(g.mappings))
	for k, v := range g.mappings {
		out[k] = v
	}
	return out
}

// Actions lists the SOAP actions served, e.g. "AddPortMapping 3544 lease=3600".
func (g *IGD) Actions() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.actions...)
}

// Close stops both servers.
func (g *IGD) Close() {
	g.ssdp.Close()
	<-g.done
	g.http.Close()
}

func (g *IGD) serveSSDP() {
	defer close(g.done)
	buf := make([]byte, 2048)
	for {
		n, from, err := g.ssdp.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(buf[:n])))
		if err != nil || req.Method != "M-SEARCH" || req.Header.Get("MAN") != `"ssdp:discover"` {
			continue
		}
		st := req.Header.Get("ST")
		if st != "ssdp:all" && !strings.HasPrefix(st, "urn:schemas-upnp-org:device:InternetGatewayDevice:") {
			continue
		}
		resp := fmt.Sprintf("HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: %s\r\n"+
			"USN: uuid:00000000-0000-0000-0000-000000000001::%s\r\nEXT:\r\nSERVER: portmaptest UPnP/1.1\r\n"+
			"LOCATION: %s/rootDesc.xml\r\n\r\n", igdType, igdType, g.http.URL)
		g.ssdp.WriteTo([]byte(resp), from)
	}
}

const (
	igdType  = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
	wanIPCon = "urn:schemas-upnp-org:service:WANIPConnection:1"
)

const rootDesc = `<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
<specVersion><major>1</major><minor>0</minor></specVersion>
<device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<friendlyName>portmaptest</friendlyName>
<UDN>uuid:00000000-0000-0000-0000-000000000001</UDN>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<UDN>uuid:00000000-0000-0000-0000-000000000002</UDN>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<UDN>uuid:00000000-0000-0000-0000-000000000003</UDN>
<serviceList><service>
<serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn</controlURL>
<eventSubURL>/evt/IPConn</eventSubURL>
<SCPDURL>/WANIPCn.xml</SCPDURL>
</service></serviceList>
</device></deviceList>
</device></deviceList>
</device>
</root>`

func (g *IGD) serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/rootDesc.xml":
		w.Header().Set("Content-Type", "text/xml")
		io.WriteString(w, rootDesc)
	case r.Method == http.MethodPost && r.URL.Path == "/ctl/IPConn":
		g.control(w, r)
	default:
		http.NotFound(w, r)
	}
}

// control answers one SOAP action.
func (g *IGD) control(w http.ResponseWriter, r *http.Request) {
	action := strings.Trim(r.Header.Get("SOAPAction"), `"`)
	svc, name, ok := strings.Cut(action, "#")
	if !ok || svc != wanIPCon {
		soapFault(w, 401, "Invalid Action")
		return
	}
	args, err := soapArgs(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		soapFault(w, 402, "Invalid Args")
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var out string
	switch name {
	case "GetExternalIPAddress":
		out = "<NewExternalIPAddress>" + g.External.String() + "</NewExternalIPAddress>"
	case "AddPortMapping":
		ext, err1 := strconv.ParseUint(args["NewExternalPort"], 10, 16)
		in, err2 := strconv.ParseUint(args["NewInternalPort"], 10, 16)
		lease, err3 := strconv.ParseUint(args["NewLeaseDuration"], 10, 32)
		client, err4 := netip.ParseAddr(args["NewInternalClient"])
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || ext == 0 || in == 0 || args["NewProtocol"] != "UDP" {
			soapFault(w, 402, "Invalid Args")
			return
		}
		g.actions = append(g.actions, fmt.Sprintf("AddPortMapping %d lease=%d", ext, lease))
		if lease != 0 && g.permanentOnly {
			soapFault(w, 725, "OnlyPermanentLeasesSupported")
			return
		}
		key := netip.AddrPortFrom(client, uint16(in))
		if m, ok := g.mappings[uint16(ext)]; ok && m.Internal != key {
			soapFault(w, 718, "ConflictInMappingEntry")
			return
		}
		g.mappings[uint16(ext)] = Mapping{Internal: key, External: uint16(ext), Lifetime: uint32(lease)}
	case "DeletePortMapping":
		ext, err := strconv.ParseUint(args["NewExternalPort"], 10, 16)
		g.actions = append(g.actions, fmt.Sprintf("DeletePortMapping %d", ext))
		if _, ok := g.mappings[uint16(ext)]; err != nil || !ok {
			soapFault(w, 714, "NoSuchEntryInArray")
			return
		}
		delete(g.mappings, uint16(ext))
	default:
		soapFault(w, 401, "Invalid Action")
		return
	}
	w.Header().Set("Content-Type", `text/xml; charset="utf-8"`)
	fmt.Fprintf(w, `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" `+
		`s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body><u:%sResponse xmlns:u="%s">%s</u:%sResponse>`+
		`</s:Body></s:Envelope>`, name, wanIPCon, out, name)
}

// soapArgs returns the action's arguments by element name.
func soapArgs(r io.Reader) (map[string]string, error) {
	dec := xml.NewDecoder(r)
	args := make(map[string]string)
	depth := 0
	var cur string
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return args, nil
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			cur = t.Name.Local
		case xml.CharData:
			if depth == 4 { // Envelope, Body, action, argument
				args[cur] = string(t)
			}
		case xml.EndElement:
			depth--
		}
	}
}

func soapFault(w http.ResponseWriter, code int, desc string) {
	w.Header().Set("Content-Type", `text/xml; charset="utf-8"`)
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" `+
		`s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body><s:Fault><faultcode>s:Client</faultcode>`+
		`<faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">`+
		`<errorCode>%d</errorCode><errorDescription>%s</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>`,
		code, desc)
}
