// kv_plugin is a go-plugin 1.0.1 gRPC plugin, drop-in for go-plugin's examples/grpc Go plugin:
// cookie BASIC_PLUGIN=hello, plugin name kv_grpc, service proto.KV. Put stores the value in the
// file kv_<key> in the working directory (the bytes exactly as sent) and Get reads it back.
// It logs through hclog as JSON on its original stderr, like go-plugin's default plugin logger.
//
// For kv_host bench-pair's tests, two of it can be told apart: with KV_GET_LOG set, each Get appends
// the line KV_GET_TAG to that file before it answers (the order the host asked in), and KV_GET_DELAY
// (a Go duration) makes each Get wait that long first.
package main

import (
	"context"
	"fmt"
	"io/ioutil"
	"os"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	kvproto "plugbay.test/kvproto"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BASIC_PLUGIN",
	MagicCookieValue: "hello",
}

type kvServer struct {
	logger hclog.Logger
	getLog string // KV_GET_LOG
	getTag string // KV_GET_TAG
	delay  time.Duration
}

func (s *kvServer) Put(ctx context.Context, req *kvproto.PutRequest) (*kvproto.Empty, error) {
	s.logger.Debug("put", "key", req.Key, "bytes", len(req.Value))
	return &kvproto.Empty{}, ioutil.WriteFile("kv_"+req.Key, req.Value, 0644)
}

func (s *kvServer) Get(ctx context.Context, req *kvproto.GetRequest) (*kvproto.GetResponse, error) {
	s.logger.Debug("get", "key", req.Key)
	time.Sleep(s.delay)
	if s.getLog != "" {
		if err := appendLine(s.getLog, s.getTag); err != nil {
			return nil, err
		}
	}
	v, err := ioutil.ReadFile("kv_" + req.Key)
	if err != nil {
		return nil, err
	}
	return &kvproto.GetResponse{Value: v}, nil
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type kvPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl *kvServer
}

func (p *kvPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	kvproto.RegisterKVServer(s, p.impl)
	return nil
}

func (p *kvPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return kvproto.NewKVClient(c), nil
}

func main() {
	// plugin.Serve swaps os.Stderr for a pipe nobody reads in 1.0.1, so bind the original now.
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "kv_plugin",
		Level:      hclog.Trace,
		Output:     os.Stderr,
		JSONFormat: true,
	})
	impl := &kvServer{logger: logger, getLog: os.Getenv("KV_GET_LOG"), getTag: os.Getenv("KV_GET_TAG")}
	if d := os.Getenv("KV_GET_DELAY"); d != "" {
		delay, err := time.ParseDuration(d)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kv_plugin: KV_GET_DELAY is a Go duration such as 10ms, got %q\n", d)
			os.Exit(1)
		}
		impl.delay = delay
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins: map[string]plugin.Plugin{
			"kv_grpc": &kvPlugin{impl: impl},
		},
		GRPCServer: plugin.DefaultGRPCServer,
		Logger:     logger,
	})
}
