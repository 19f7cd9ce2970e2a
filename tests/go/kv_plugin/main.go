// kv_plugin is a go-plugin 1.0.1 gRPC plugin, drop-in for go-plugin's examples/grpc Go plugin:
// cookie BASIC_PLUGIN=hello, plugin name kv_grpc, service proto.KV. Put stores the value in the
// file kv_<key> in the working directory (the bytes exactly as sent) and Get reads it back.
// It logs through hclog as JSON on its original stderr, like go-plugin's default plugin logger.
package main

import (
	"context"
	"io/ioutil"
	"os"

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
}

func (s *kvServer) Put(ctx context.Context, req *kvproto.PutRequest) (*kvproto.Empty, error) {
	s.logger.Debug("put", "key", req.Key, "bytes", len(req.Value))
	return &kvproto.Empty{}, ioutil.WriteFile("kv_"+req.Key, req.Value, 0644)
}

func (s *kvServer) Get(ctx context.Context, req *kvproto.GetRequest) (*kvproto.GetResponse, error) {
	s.logger.Debug("get", "key", req.Key)
	v, err := ioutil.ReadFile("kv_" + req.Key)
	if err != nil {
		return nil, err
	}
	return &kvproto.GetResponse{Value: v}, nil
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
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins: map[string]plugin.Plugin{
			"kv_grpc": &kvPlugin{impl: &kvServer{logger: logger}},
		},
		GRPCServer: plugin.DefaultGRPCServer,
		Logger:     logger,
	})
}
