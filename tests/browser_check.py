"""Open an HTML file in headless Chromium and report what a person would see: a full-page screenshot, the images
that did not decode, and the console errors. Speaks the DevTools protocol over ``--remote-debugging-pipe``
(messages of JSON ending in a NUL byte on file descriptors 3 and 4): no websocket client, no extra package.

``python tests/browser_check.py PAGE.html [SCREENSHOT.png]`` prints the result as JSON.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable', 'chrome')

#: what the page reports about its images: how many, and those not decoded or of zero size
IMAGES_JS = ("JSON.stringify({count: document.images.length, broken: Array.from(document.images)"
             ".filter(i => !i.complete || i.naturalWidth === 0 || i.naturalHeight === 0 || i.width === 0)"
             ".map(i => (i.alt || '') + ' ' + i.src.slice(0, 60))})")


def find_browser() -> str | None:
    """The path of a Chromium / Chrome binary on PATH, or None."""
    return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


def _above(fd: int, lowest: int) -> int:
    """`fd` moved to a descriptor number of at least `lowest`."""
    import fcntl
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return moved


class _Pipe:
    def __init__(self, browser: str, profile: str):
        to_read, self._to_browser = os.pipe()  # the browser reads fd 3
        self._from_browser, to_write = os.pipe()  # and writes fd 4
        # the shell moves the pipe ends to the descriptors Chromium expects (from numbers above them)
        to_read, to_write = (_above(fd, 10) for fd in (to_read, to_write))
        move = f'exec "$0" "$@" 3<&{to_read} 4>&{to_write} {to_read}<&- {to_write}>&-'
        self.process = subprocess.Popen(
            ['bash', '-c', move, browser, '--headless', '--remote-debugging-pipe', '--no-sandbox', '--disable-gpu',
             '--no-first-run', '--no-default-browser-check', '--disable-extensions', '--hide-scrollbars',
             f'--user-data-dir={profile}', 'about:blank'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_read, to_write))
        os.close(to_read)
        os.close(to_write)
        self._buffer, self._id, self.events = b'', 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        self._id += 1
        message = {'id': self._id, 'method': method, 'params': params or {}}
        if session:
            message['sessionId'] = session
        os.write(self._to_browser, json.dumps(message).encode() + b'\0')
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._next()
            if reply.get('id') == self._id:
                if 'error' in reply:
                    raise RuntimeError(f'{method}: {reply["error"]}')
                return reply.get('result', {})
            self.events.append(reply)
        raise TimeoutError(f'{method}: no answer from the browser in {timeout} s')

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((e for e in self.events if e.get('method') == method), None)
            if found is not None:
                return found
            self.events.append(self._next())
        raise TimeoutError(f'no {method} event in {timeout} s')

    def _next(self) -> dict:
        while b'\0' not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError('the browser closed its DevTools pipe')
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b'\0', 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            os.write(self._to_browser, json.dumps({'id': 0, 'method': 'Browser.close'}).encode() + b'\0')
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)


def _console_errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get('method'), event.get('params', {})
        if method == 'Runtime.exceptionThrown':
            errors.append(params.get('exceptionDetails', {}).get('text', 'exception'))
        elif method == 'Runtime.consoleAPICalled' and params.get('type') in ('error', 'assert'):
            errors.append(' '.join(str(a.get('value', a.get('description', ''))) for a in params.get('args', [])))
        elif method == 'Log.entryAdded' and params.get('entry', {}).get('level') == 'error':
            entry = params['entry']
            errors.append(f'{entry.get("source")}: {entry.get("text")} {entry.get("url", "")}'.strip())
    return errors


def check_page(path: str, screenshot: str | None = None, browser: str | None = None, width: int = 1280) -> dict:
    """Open `path` in headless Chromium; returns ``{'images': n, 'broken': [...], 'console_errors': [...],
    'height': page height, 'screenshot': path}`` (a full-page PNG written to `screenshot` when given)."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError('no chromium binary on PATH')
    with tempfile.TemporaryDirectory(prefix='finetune-browser-') as profile:
        pipe = _Pipe(browser, profile)
        try:
            target = pipe.send('Target.createTarget', {'url': 'about:blank'})['targetId']
            session = pipe.send('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
            for domain in ('Page', 'Runtime', 'Log'):
                pipe.send(f'{domain}.enable', session=session)
            pipe.send('Emulation.setDeviceMetricsOverride', {'width': width, 'height': 900, 'deviceScaleFactor': 1,
                                                             'mobile': False}, session=session)
            pipe.send('Page.navigate', {'url': 'file://' + os.path.abspath(path)}, session=session)
            pipe.wait_for('Page.loadEventFired')
            images = json.loads(pipe.send('Runtime.evaluate', {'expression': IMAGES_JS, 'returnByValue': True},
                                          session=session)['result']['value'])
            size = pipe.send('Page.getLayoutMetrics', session=session)['cssContentSize']
            out = {'images': images['count'], 'broken': images['broken'], 'height': int(size['height'])}
            if screenshot:
                shot = pipe.send('Page.captureScreenshot', {
                    'format': 'png', 'captureBeyondViewport': True,
                    'clip': {'x': 0, 'y': 0, 'width': width, 'height': size['height'], 'scale': 1}}, session=session)
                with open(screenshot, 'wb') as f:
                    f.write(base64.b64decode(shot['data']))
                out['screenshot'] = screenshot
            time.sleep(0.2)  # late console messages
            pipe.send('Runtime.evaluate', {'expression': '1'}, session=session)
            out['console_errors'] = _console_errors(pipe.events)
            return out
        finally:
            pipe.close()


if __name__ == '__main__':
    print(json.dumps(check_page(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None), indent=1))
