// stdio_peer plays both sides of GRPCStdio (plugin.GRPCStdio/StreamStdio) the way go-plugin >= 1.4
// does, around go-plugin 1.0.1 (which has no GRPCStdio of its own):
//
//	stdio_peer plugin   a KV plugin (cookie BASIC_PLUGIN=hello, kv_grpc, proto.KV) that serves
//	                    GRPCStdio as current go-plugin's plugin side does: a goroutine per pipe
//	                    copies its stdout/stderr pipe in 1 KiB chunks into an unbuffered channel, the
//	                    stream sends them (no host reading: the writes wait). Put writes instead of
//	                    storing for these keys:
//	                      out / err            the value, to the stdout / stderr pipe
//	                      bulk-out / bulk-err  as many bytes as the value says (decimal), in 64 KiB writes
//	                    GRPCController.Shutdown is go-plugin's: grpc's Server.Stop(), which cuts every
//	                    connection at once.
//	stdio_peer host [--stall D] PUTS...
//	                    a go-plugin 1.0.1 host (the plugin command from STDIO_PLUGIN, through
//	                    `sh -c`) that, as current go-plugin's host does, opens StreamStdio as soon as
//	                    it is connected and reads it until it breaks (--stall: its sink stalls D before
//	                    the first chunk, which holds the stream up meanwhile); makes each Put (KEY=VALUE), then
//	                    client.Kill() at once: Shutdown, the connection closed as soon as Shutdown
//	                    returned, the grace. It prints what it received as JSON on stdout:
//	                      {"stdout": N, "stderr": M, "graceful": true}
//
// StdioData is encoded by hand (field 1 channel, field 2 data): go-plugin 1.0.1 carries no
// generated code for it, and these are the proto's two fields.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"plugbay.test/hostutil"
	kvproto "plugbay.test/kvproto"
)

const (
	channelStdout = 1
	channelStderr = 2
	chunk         = 1024 // go-plugin's plugin side reads its pipes in chunks this size
)

// stdioData is plugin.StdioData on the wire.
type stdioData struct {
	Channel uint64
	Data    []byte
}

func (m *stdioData) Reset() { *m = stdioData{} }
func (m *stdioData) String() string {
	return fmt.Sprintf("StdioData{%d, %d bytes}", m.Channel, len(m.Data))
}
func (*stdioData) ProtoMessage() {}

func (m *stdioData) Marshal() ([]byte, error) {
	var tmp [binary.MaxVarintLen64]byte
	out := append([]byte{0x08}, tmp[:binary.PutUvarint(tmp[:], m.Channel)]...)
	out = append(out, 0x12)
	out = append(out, tmp[:binary.PutUvarint(tmp[:], uint64(len(m.Data)))]...)
	return append(out, m.Data...), nil
}

func (m *stdioData) Unmarshal(b []byte) error {
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return fmt.Errorf("bad StdioData key")
		}
		b = b[n:]
		switch key {
		case 0x08:
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return fmt.Errorf("bad StdioData channel")
			}
			m.Channel, b = v, b[n:]
		case 0x12:
			size, n := binary.Uvarint(b)
			if n <= 0 || uint64(len(b)-n) < size {
				return fmt.Errorf("bad StdioData data")
			}
			m.Data = append([]byte(nil), b[n:n+int(size)]...)
			b = b[n+int(size):]
		default:
			return fmt.Errorf("unexpected StdioData field key %d", key)
		}
	}
	return nil
}

// empty is google.protobuf.Empty on the wire.
type empty struct{}

func (*empty) Reset()                   {}
func (*empty) String() string           { return "Empty" }
func (*empty) ProtoMessage()            {}
func (*empty) Marshal() ([]byte, error) { return nil, nil }
func (*empty) Unmarshal([]byte) error   { return nil }

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BASIC_PLUGIN",
	MagicCookieValue: "hello",
}

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "plugin" {
		servePlugin()
		return
	}
	if len(os.Args) >= 2 && os.Args[1] == "host" {
		flags := flag.NewFlagSet("host", flag.ExitOnError)
		stall := flags.Duration("stall", 0, "the sink stalls this long before it takes the first chunk")
		_ = flags.Parse(os.Args[2:])
		runHost(*stall, flags.Args())
		return
	}
	fmt.Fprintln(os.Stderr, "usage: stdio_peer plugin | stdio_peer host [--stall D] KEY=VALUE...")
	os.Exit(2)
}

// ---------------------------------------------------------------- plugin side

type kvServer struct {
	stdout, stderr *os.File
	data           map[string][]byte
}

func (s *kvServer) Put(ctx context.Context, req *kvproto.PutRequest) (*kvproto.Empty, error) {
	var err error
	switch req.Key {
	case "out":
		_, err = s.stdout.Write(req.Value)
	case "err":
		_, err = s.stderr.Write(req.Value)
	case "bulk-out", "bulk-err":
		dst := s.stdout
		if req.Key == "bulk-err" {
			dst = s.stderr
		}
		var n int
		if n, err = strconv.Atoi(string(req.Value)); err == nil {
			block := []byte(strings.Repeat("0123456789abcdef", 4096))
			for n > 0 && err == nil {
				size := len(block)
				if n < size {
					size = n
				}
				_, err = dst.Write(block[:size])
				n -= size
			}
		}
	default:
		s.data[req.Key] = req.Value
	}
	return &kvproto.Empty{}, err
}

func (s *kvServer) Get(ctx context.Context, req *kvproto.GetRequest) (*kvproto.GetResponse, error) {
	return &kvproto.GetResponse{Value: s.data[req.Key]}, nil
}

type kvPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl  *kvServer
	stdio *stdioServer
}

func (p *kvPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	kvproto.RegisterKVServer(s, p.impl)
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: "plugin.GRPCStdio",
		HandlerType: (*interface{})(nil),
		Streams: []grpc.StreamDesc{{
			StreamName:    "StreamStdio",
			Handler:       func(_ interface{}, stream grpc.ServerStream) error { return p.stdio.stream(stream) },
			ServerStreams: true,
		}},
		Metadata: "grpc_stdio.proto",
	}, p.stdio)
	return nil
}

func (p *kvPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return kvproto.NewKVClient(c), nil
}

// stdioServer is go-plugin's grpcStdioServer: the pipes' chunks wait in unbuffered channels.
type stdioServer struct {
	stdoutCh, stderrCh chan []byte
}

func copyChan(dst chan<- []byte, src io.Reader) {
	for {
		data := make([]byte, chunk)
		n, err := src.Read(data)
		if n > 0 {
			dst <- data[:n]
		}
		if err != nil {
			return
		}
	}
}

func (s *stdioServer) stream(stream grpc.ServerStream) error {
	if err := stream.RecvMsg(&empty{}); err != nil {
		return err
	}
	var data stdioData
	for {
		select {
		case data.Data = <-s.stdoutCh:
			data.Channel = channelStdout
		case data.Data = <-s.stderrCh:
			data.Channel = channelStderr
		case <-stream.Context().Done():
			return nil
		}
		if err := stream.SendMsg(&data); err != nil {
			return err
		}
	}
}

func servePlugin() {
	outR, outW, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	stdio := &stdioServer{stdoutCh: make(chan []byte), stderrCh: make(chan []byte)}
	go copyChan(stdio.stdoutCh, outR)
	go copyChan(stdio.stderrCh, errR)
	logger := hclog.New(&hclog.LoggerOptions{Name: "stdio_peer", Level: hclog.Info, Output: os.Stderr, JSONFormat: true})
	// Idle at most two minutes: nothing outlives a test run.
	time.AfterFunc(120*time.Second, func() { os.Exit(4) })
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins: map[string]plugin.Plugin{
			"kv_grpc": &kvPlugin{impl: &kvServer{stdout: outW, stderr: errW, data: map[string][]byte{}}, stdio: stdio},
		},
		GRPCServer: plugin.DefaultGRPCServer,
		Logger:     logger,
	})
}

// ---------------------------------------------------------------- host side

func runHost(stall time.Duration, puts []string) {
	host := hostutil.NewHost("stdio_host", "STDIO_PLUGIN", false)
	host.Watchdog(60 * time.Second)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  hostutil.Handshake,
		Plugins:          map[string]plugin.Plugin{"kv_grpc": &kvPlugin{}},
		Cmd:              host.Cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           host.Logger(),
	})
	killed := false
	defer func() {
		if !killed {
			host.Kill(client)
		}
	}()
	rpcClient, err := client.Client()
	if err != nil {
		host.Fail(fmt.Sprintf("error: %v", err))
	}
	conn := rpcClient.(*plugin.GRPCClient).Conn
	// current go-plugin's newGRPCClient: the stdio stream opens at once and is read until it breaks
	counts := map[uint64]int{}
	done := make(chan error, 1)
	stream, err := conn.NewStream(context.Background(), &grpc.StreamDesc{StreamName: "StreamStdio", ServerStreams: true},
		"/plugin.GRPCStdio/StreamStdio")
	if err == nil {
		err = stream.SendMsg(&empty{})
	}
	if err == nil {
		err = stream.CloseSend()
	}
	if err != nil {
		host.Fail(fmt.Sprintf("error: opening StreamStdio: %v", err))
	}
	go func() {
		time.Sleep(stall) // go-plugin's host writes each chunk to its sink: one that stalls holds the stream up
		for {
			var data stdioData
			if err := stream.RecvMsg(&data); err != nil {
				done <- err
				return
			}
			counts[data.Channel] += len(data.Data)
		}
	}()
	raw, err := rpcClient.Dispense("kv_grpc")
	if err != nil {
		host.Fail(fmt.Sprintf("error: %v", err))
	}
	kv := raw.(kvproto.KVClient)
	for _, put := range puts {
		parts := strings.SplitN(put, "=", 2)
		if len(parts) != 2 {
			host.Fail(fmt.Sprintf("error: %q is no KEY=VALUE", put))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := kv.Put(ctx, &kvproto.PutRequest{Key: parts[0], Value: []byte(parts[1])})
		cancel()
		if err != nil {
			host.Fail(fmt.Sprintf("error: %v", err))
		}
	}
	// go-plugin's Kill: GRPCClient.Close (Shutdown, then the connection closed), the grace
	host.Kill(client)
	killed = true
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		host.Fail("error: the stdio stream did not end after the kill")
	}
	out, _ := json.Marshal(map[string]interface{}{
		"stdout": counts[channelStdout], "stderr": counts[channelStderr], "graceful": host.Sink.Graceful(),
	})
	fmt.Println(string(out))
}
