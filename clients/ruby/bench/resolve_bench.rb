# frozen_string_literal: true

# Micro benchmark of DuoRouting::Client#resolve_model against a running sidecar, as a Rails process would call
# it: one shared client, sequentially and from a few threads (Puma). Also measures the bare generated stub on
# the same channel settings, so the wrapper's own cost (token signing, error mapping) shows.
#
#   make run &    # or any sidecar
#   ruby -Iclients/ruby/lib clients/ruby/bench/resolve_bench.rb --address 127.0.0.1:50051 --seconds 5
#
# Loops are bounded by time (--seconds per row) and by --max-calls; only the given address is called.
require "optparse"
require "duo_routing"

options = { address: "127.0.0.1:50051", seconds: 5.0, threads: [1, 4, 8], max_calls: 200_000,
            secret: "bench-secret", user_id: 1, feature: "duo_chat", root_namespace_id: 0 }
OptionParser.new do |opts|
  opts.on("--address HOST:PORT") { |v| options[:address] = v }
  opts.on("--seconds N", Float, "duration of each row") { |v| options[:seconds] = v }
  opts.on("--threads LIST", Array, "thread counts, e.g. 1,4,8") { |v| options[:threads] = v.map { |n| Integer(n) } }
  opts.on("--max-calls N", Integer, "upper bound on calls per row") { |v| options[:max_calls] = v }
  opts.on("--secret S", "signs tokens; 'none' sends no authorization header") { |v| options[:secret] = v }
  opts.on("--user ID", Integer) { |v| options[:user_id] = v }
  opts.on("--feature NAME") { |v| options[:feature] = v }
  opts.on("--namespace ID", Integer) { |v| options[:root_namespace_id] = v }
end.parse!
secret = options[:secret] == "none" ? nil : options[:secret]

def now
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

# Runs call from `threads` threads until the time or call budget is spent; returns [calls/s, latencies in s].
def measure(threads, seconds, max_calls, &call)
  per_thread = (max_calls / threads.to_f).ceil
  started = now
  stop_at = started + seconds
  workers = Array.new(threads) do
    Thread.new do
      latencies = []
      while latencies.size < per_thread && (t0 = now) < stop_at
        call.call
        latencies << (now - t0)
      end
      latencies
    end
  end
  latencies = workers.flat_map(&:value)
  [latencies.size / (now - started), latencies.sort]
end

def percentile(sorted, fraction)
  sorted[[(sorted.size * fraction).ceil - 1, 0].max]
end

client = DuoRouting::Client.new(address: options[:address], secret: secret)
request = { user_id: options[:user_id], feature: options[:feature], root_namespace_id: options[:root_namespace_id] }
stub = Gitlab::Duo::Routing::V1::RoutingService::Stub.new(options[:address], :this_channel_is_insecure)
bare_request = Gitlab::Duo::Routing::V1::ResolveModelRequest.new(**request)

route = client.resolve_model(**request)
puts "sidecar #{options[:address]}: #{options[:feature]} -> #{route.model_identifier} (#{route.source}); " \
     "ruby #{RUBY_VERSION}, grpc #{GRPC::VERSION}, #{options[:seconds]} s per row"
500.times { client.resolve_model(**request) && stub.resolve_model(bare_request, deadline: Time.now + 1) } # warm-up

ROW = "%<caller>-22s %<threads>8s %<rate>12s %<p50>10s %<p99>10s %<calls>10s"
puts format(ROW, caller: "caller", threads: "threads", rate: "calls/s", p50: "p50 ms", p99: "p99 ms", calls: "calls")
rows = options[:threads].flat_map do |threads|
  [["DuoRouting::Client", threads, -> { client.resolve_model(**request) }],
   ["generated stub", threads, -> { stub.resolve_model(bare_request, deadline: Time.now + 1) }]]
end
rows.each do |name, threads, call|
  rate, latencies = measure(threads, options[:seconds], options[:max_calls], &call)
  p50, p99 = [0.50, 0.99].map { |q| format("%.3f", percentile(latencies, q) * 1000) }
  puts format(ROW, caller: name, threads: threads, rate: rate.round, p50: p50, p99: p99, calls: latencies.size)
end
client.close
