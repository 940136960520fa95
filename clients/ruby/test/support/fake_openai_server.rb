# frozen_string_literal: true

require "json"
require "socket"

# A tiny OpenAI-compatible server on 127.0.0.1 (plain TCPServer, no gems): POST /v1/chat/completions answers
# with text/event-stream chunks in OpenAI's streaming format, the finish_reason chunk, a usage chunk
# (stream_options.include_usage) and "data: [DONE]". It stands in for vLLM behind a self-hosted model.
class FakeOpenAIServer
  Request = Struct.new(:verb, :path, :headers, :body, keyword_init: true)

  # The served model name picks the behaviour, so one server can back several self-hosted models.
  BROKEN_SUFFIX = "-broken" # streams two deltas, then ends the stream without a finish_reason or [DONE]
  ENDLESS_SUFFIX = "-endless" # streams deltas every 20 ms until the client goes away (at most 30 s)

  attr_reader :port

  def initialize(deltas:, finish_reason: "stop", usage: { prompt_tokens: 12, completion_tokens: 5 }, delay: 0.005)
    @deltas = deltas
    @finish_reason = finish_reason
    @usage = usage
    @delay = delay
    @requests = []
    @outcomes = []
    @lock = Mutex.new
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @thread = Thread.new { serve }
  end

  def endpoint
    "http://127.0.0.1:#{port}/v1"
  end

  def requests
    @lock.synchronize { @requests.dup }
  end

  # How each completion stream ended, in order: :completed, or :disconnected when the client hung up first.
  def outcomes
    @lock.synchronize { @outcomes.dup }
  end

  def stop
    @server.close
    @thread.join(5)
  end

  private

  def serve
    loop do
      client = @server.accept
      Thread.new(client) { |socket| handle(socket) }
    end
  rescue IOError, Errno::EBADF
    nil # closed by #stop
  end

  def handle(socket)
    request = read_request(socket)
    @lock.synchronize { @requests << request }
    if request.verb != "POST" || request.path != "/v1/chat/completions"
      return respond(socket, 404, "application/json", { error: { message: "no route #{request.path}" } }.to_json)
    end

    stream(socket, JSON.parse(request.body).fetch("model", ""))
  rescue StandardError => e
    warn "fake OpenAI server: #{e.class}: #{e.message}"
  ensure
    socket.close unless socket.closed?
  end

  def read_request(socket)
    verb, path = socket.gets("\r\n").to_s.split(" ", 3)
    headers = {}
    while (line = socket.gets("\r\n")) && line != "\r\n"
      name, value = line.chomp("\r\n").split(":", 2)
      headers[name.downcase] = value.to_s.strip
    end
    body = socket.read(headers.fetch("content-length", "0").to_i).to_s
    Request.new(verb: verb, path: path, headers: headers, body: body)
  end

  def respond(socket, status, content_type, body)
    socket.write("HTTP/1.1 #{status} X\r\nContent-Type: #{content_type}\r\nContent-Length: #{body.bytesize}\r\n" \
                 "Connection: close\r\n\r\n#{body}")
  end

  def stream(socket, model)
    socket.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n" \
                 "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    delay = model.end_with?(ENDLESS_SUFFIX) ? 0.02 : @delay
    chunks(model).each do |chunk|
      data = "data: #{chunk.is_a?(String) ? chunk : chunk.to_json}\n\n"
      socket.write("#{data.bytesize.to_s(16)}\r\n#{data}\r\n")
      socket.flush
      sleep(delay)
    end
    socket.write("0\r\n\r\n")
    outcome(:completed)
  rescue Errno::EPIPE, Errno::ECONNRESET
    outcome(:disconnected)
  end

  def outcome(how)
    @lock.synchronize { @outcomes << how }
  end

  def chunks(model)
    return endless_chunks(model) if model.end_with?(ENDLESS_SUFFIX)

    choice = ->(delta, finish) { chunk(model, [{ index: 0, delta: delta, finish_reason: finish }]) }
    deltas = [choice.call({ role: "assistant", content: "" }, nil)] +
             @deltas.map { |text| choice.call({ content: text }, nil) }
    return deltas.first(3) if model.end_with?(BROKEN_SUFFIX)

    usage = @usage.merge(total_tokens: @usage.values.sum)
    deltas + [choice.call({}, @finish_reason), chunk(model, [], usage: usage), "[DONE]"]
  end

  def endless_chunks(model)
    Enumerator.new do |out|
      1500.times { |i| out << chunk(model, [{ index: 0, delta: { content: "word#{i} " }, finish_reason: nil }]) }
    end
  end

  def chunk(model, choices, **extra)
    { id: "chatcmpl-fake", object: "chat.completion.chunk", created: 1_700_000_000, model: model,
      choices: choices, **extra }
  end
end
